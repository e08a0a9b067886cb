"""Embedding requests on the llm model (vLLM's pooling of a decoder-only model): their input and their answer.

The optional BYTES input `pooling_parameters` holds a JSON object with vLLM's PoolingParams names
(`pooling_type`, `normalize`, `dimensions`, `truncate_prompt_tokens`, each optional: `{}` asks for the
defaults). Its presence makes the request an embedding request: the engine prefills the prompt and answers
with one response, FINAL, carrying the `embedding` output (FP32 [-1]) beside the request's token counts.
Such a request takes only the inputs that mean something to it; a sampling tensor or `sampling_parameters`
with it is refused by name, never ignored.

On a sequence classifier (a *ForSequenceClassification checkpoint) the same request is a classification: the
`embedding` output carries the classification head's logits of the last token (FP32 [num_labels], before any
softmax or sigmoid); `dimensions`, `normalize` and any pooling type but LAST are refused there, and so is
every generation request.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from engine import PoolingParams, RequestOutput
from triton_adapters.json_input import build_params, json_object

# pooling_parameters key -> the JSON type its value must have (null: the default). Strict, unlike
# sampling_parameters' coercion of strings: no client of this input predates it.
JSON_FIELDS: dict[str, type] = {
    "pooling_type": str,
    "normalize": bool,
    "dimensions": int,
    "truncate_prompt_tokens": int,
}
# The inputs an embedding request may carry: its prompt, how it is scheduled, whose prefix cache it shares
# and its adapter; and flags that shape a stream of responses, meaningless for its single one.
ACCEPTED_INPUTS = frozenset(
    {
        "input_ids",
        "pooling_parameters",
        "priority",
        "cache_salt",
        "lora_name",
        "lora_path",
        "stream",
        "return_unchanged_outputs",
        "return_num_input_tokens",
    }
)


def pooling_params(raw: str, input_names: Iterable[str]) -> PoolingParams:
    """The PoolingParams of a `pooling_parameters` JSON object sent with the inputs `input_names`; a
    ValueError names the key or input at fault."""
    refused = sorted(set(input_names) - ACCEPTED_INPUTS)
    if refused:
        raise ValueError(
            f"input '{refused[0]}' does not apply to an embedding request (pooling_parameters): it takes "
            f"only {', '.join(sorted(ACCEPTED_INPUTS))}"
        )
    loaded = json_object(raw, "pooling_parameters")
    fields = {key: _checked(key, value) for key, value in loaded.items() if value is not None}
    return build_params(PoolingParams, fields)


def _checked(key: str, value: Any) -> Any:
    if key not in JSON_FIELDS:
        raise ValueError(f"unknown pooling parameter '{key}' (known: {', '.join(JSON_FIELDS)})")
    kind = JSON_FIELDS[key]
    # JSON true is a Python int too: an integer parameter takes no boolean.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"parameter '{key}' must be {'an integer' if kind is int else kind.__name__}, got {value!r}")
    return value


def embedding_tensors(output: RequestOutput) -> dict[str, np.ndarray]:
    """Tensor name -> numpy array of an embedding request's one response (an output whose `embedding` is
    set): the vector and the counts, no text and no tokens (nothing was generated)."""
    assert output.embedding is not None, f"request {output.request_id} has no embedding to send"
    return {
        "embedding": np.asarray(output.embedding, dtype=np.float32),
        "request_id": np.array([output.request_id.encode("utf-8")], dtype=np.object_),
        "num_input_tokens": np.array([output.num_prompt_tokens], dtype=np.int32),
        "num_cached_tokens": np.array([output.num_cached_tokens], dtype=np.int32),
        "finish_reason": np.array([(output.finish_reason or "").encode("utf-8")], dtype=np.object_),
    }
