"""Translate the `llm` model's Triton inputs into an engine request.

Two client conventions arrive here and may be mixed in one request:
  * TensorRT-LLM style: one tensor per parameter (`temperature`, `top_k`, `stop_words`, ...);
  * vllm_backend style: one `sampling_parameters` BYTES tensor holding a JSON object with vLLM names.
Individual tensors win over the JSON object when both name the same parameter. A parameter the
engine cannot honour yet is rejected by name, never silently dropped. A `pooling_parameters` input makes
the request an embedding request instead (triton_adapters/embedding.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine import PoolingParams, SamplingParams
from triton_adapters.embedding import pooling_params
from triton_adapters.json_input import build_params, json_object
from triton_adapters.structured_request import JSON_KEYS as STRUCTURED_JSON_KEYS
from triton_adapters.structured_request import structured_outputs_from_json, structured_outputs_from_tensors

# Tensor name -> SamplingParams field, for scalar tensors. Aliases cover TensorRT-LLM's spellings.
SCALAR_TENSORS: dict[str, str] = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "random_seed": "seed",
    "min_tokens": "min_tokens",
    "min_length": "min_tokens",
    "ignore_eos": "ignore_eos",
    "include_stop_str_in_output": "include_stop_str_in_output",
    "skip_special_tokens": "skip_special_tokens",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "repetition_penalty": "repetition_penalty",
}

# sampling_parameters JSON keys the engine honours, with the type each is coerced to
# (vllm_backend clients often send numbers as strings).
JSON_FIELDS: dict[str, type] = {
    "max_tokens": int,
    "min_tokens": int,
    "temperature": float,
    "top_p": float,
    "top_k": int,
    "min_p": float,
    "seed": int,
    "ignore_eos": bool,
    "include_stop_str_in_output": bool,
    "skip_special_tokens": bool,
    "spaces_between_special_tokens": bool,
    "presence_penalty": float,
    "frequency_penalty": float,
    "repetition_penalty": float,
    "logprobs": int,
    "prompt_logprobs": int,
    "n": int,
    "best_of": int,
    "truncate_prompt_tokens": int,
    "stream_interval": int,
}
JSON_LIST_FIELDS = ("stop", "stop_token_ids", "allowed_token_ids", "bad_words")
# JSON objects passed through as they are (SamplingParams validates them): token id -> bias.
JSON_DICT_FIELDS = ("logit_bias",)

# Parameters whose neutral value is accepted; anything else is refused until the engine supports it.
NEUTRAL_VALUES: dict[str, Any] = {
    "beam_width": 1,
    "return_context_logits": False,
    "return_generation_logits": False,
    "use_beam_search": False,
}
# Accepted in sampling_parameters and meaningless there: padding ids exist only for static batches;
# finish_reason and num_input_tokens are always returned (vllm_backend sends them only when its flags
# ask). As tensors, return_num_output_tokens, return_cumulative_logprob and return_finish_reason do change
# the outputs (parse_generation_request).
IGNORED = (
    "pad_id",
    "stream",
    "exclude_input_in_output",
    "return_finish_reason",
    "return_num_input_tokens",
    "return_num_output_tokens",
)


class UnsupportedParameterError(ValueError):
    """A request parameter the engine does not implement; the message names it."""


@dataclass
class GenerationRequest:
    """Everything the llm model needs to submit one request to the engine."""

    # Prompt token ids from preprocess.
    prompt_token_ids: list[int]
    # Validated engine parameters: SamplingParams to generate, PoolingParams (the `pooling_parameters`
    # input) to embed the prompt.
    params: SamplingParams | PoolingParams
    # True: one response per engine step carrying a text delta; False: one response with everything.
    stream: bool
    # vLLM priority: lower values are scheduled first.
    priority: int
    # Isolates prefix-cache entries between tenants; None shares the cache.
    cache_salt: str | None
    # False (TensorRT-LLM default is True for our ensemble): non-streamed text starts with the prompt.
    exclude_input_in_output: bool
    # False: a streamed sequence's responses after its first leave out the outputs that stay the same.
    return_unchanged_outputs: bool = True
    # vllm_backend's return_num_output_tokens: num_output_tokens counts the tokens of each response, as
    # vllm_backend's does; without it, the sequence's tokens so far (TensorRT-LLM style, our default).
    output_tokens_per_response: bool = False
    # vllm_backend's return_cumulative_logprob: send `cumulative_logprob`.
    cumulative_logprob: bool = False
    # What finish_reason reads before a sequence ends: "" (ours), or "None" under vllm_backend's
    # return_finish_reason (it sends str(None)).
    unfinished_reason: str = ""
    # The LoRA adapter (a name of the llm model's lora_modules) that serves the request; None: the base model.
    lora_name: str | None = None
    # The directory of an adapter loaded at its first request (allow_runtime_lora_updating), named lora_name.
    lora_path: str | None = None

    @property
    def num_sequences(self) -> int:
        """Sequences the request's responses carry: n of a generation, 1 of an embedding."""
        return self.params.n if isinstance(self.params, SamplingParams) else 1


def _scalar(array: np.ndarray) -> Any:
    value = array.reshape(-1)[0]
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


def _strings(array: np.ndarray) -> list[str]:
    return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.reshape(-1)]


def _check_neutral(name: str, value: Any) -> None:
    neutral = NEUTRAL_VALUES[name]
    if value is None or value == neutral or str(value).strip().lower() == str(neutral).lower():
        return
    raise UnsupportedParameterError(f"parameter '{name}' is not supported by this engine yet (got {value!r})")


def _json_parameters(raw: str) -> dict[str, Any]:
    loaded = json_object(raw, "sampling_parameters")
    fields: dict[str, Any] = {}
    for key, value in loaded.items():
        if value is None:
            continue
        if key in JSON_FIELDS:
            fields[key] = _coerce(key, value, JSON_FIELDS[key])
        elif key in JSON_LIST_FIELDS:
            fields[key] = [value] if isinstance(value, str | int) else list(value)
        elif key in JSON_DICT_FIELDS:
            if not isinstance(value, dict):
                raise ValueError(f"parameter '{key}' must be a JSON object, got {value!r}")
            fields[key] = value
        elif key == "lora_name":
            # vllm_backend's key: the request's adapter, not a sampling parameter (parse_generation_request).
            if not isinstance(value, str):
                raise ValueError(f"parameter 'lora_name' must be an adapter name (a string), got {value!r}")
            fields[key] = value
        elif key in NEUTRAL_VALUES:
            _check_neutral(key, value)
        elif key not in IGNORED and key not in STRUCTURED_JSON_KEYS:
            raise ValueError(f"unknown sampling parameter '{key}'")
    structured = structured_outputs_from_json(loaded)
    if structured is not None:
        fields["structured_outputs"] = structured
    return fields


def _coerce(key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes")
        return bool(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"parameter '{key}' must be {kind.__name__}, got {value!r}") from None


def parse_generation_request(inputs: Mapping[str, np.ndarray]) -> GenerationRequest:
    """Build a request from the llm model's input tensors (name -> numpy array, absent = not sent)."""
    if "input_ids" not in inputs:
        raise ValueError("input 'input_ids' is required")
    if "pooling_parameters" in inputs:
        return GenerationRequest(
            prompt_token_ids=_token_ids(inputs),
            params=pooling_params(_scalar(inputs["pooling_parameters"]), inputs),
            # One response whatever the client asked: there is nothing to stream.
            stream=False,
            priority=_priority(inputs),
            cache_salt=_cache_salt(inputs),
            exclude_input_in_output=True,
            lora_name=_text(inputs, "lora_name"),
            lora_path=_text(inputs, "lora_path"),
        )
    fields: dict[str, Any] = {}
    if "sampling_parameters" in inputs:
        fields.update(_json_parameters(_scalar(inputs["sampling_parameters"])))
    for name, array in inputs.items():
        if name in SCALAR_TENSORS:
            fields[SCALAR_TENSORS[name]] = _scalar(array)
        elif name == "stop_words":
            fields["stop"] = [word for word in _strings(array) if word]
        elif name == "end_id":
            fields["stop_token_ids"] = [int(token) for token in array.reshape(-1)]
        elif name == "bad_words":
            fields["bad_words"] = [word for word in _strings(array) if word]
        elif name in ("return_log_probs", "return_cumulative_logprob") and bool(_scalar(array)):
            # TensorRT-LLM's flag (the sampled tokens' logprobs: output_log_probs, cum_log_probs) and
            # vllm_backend's (their sum, cumulative_logprob): both need the sampled tokens' logprobs.
            fields["logprobs"] = fields.get("logprobs") or 0
        elif name in NEUTRAL_VALUES:
            _check_neutral(name, _scalar(array))
    guided = structured_outputs_from_tensors(inputs)
    if guided is not None:  # tensors win over sampling_parameters here too
        fields["structured_outputs"] = guided
    lora_name = fields.pop("lora_name", None)
    if "lora_name" in inputs:  # a tensor wins, as everywhere; sent empty, it names nothing
        lora_name = _scalar(inputs["lora_name"]) or lora_name
    return GenerationRequest(
        prompt_token_ids=_token_ids(inputs),
        params=build_params(SamplingParams, fields),
        stream=_flag(inputs, "stream", default=False),
        priority=_priority(inputs),
        cache_salt=_cache_salt(inputs),
        exclude_input_in_output=_flag(inputs, "exclude_input_in_output", default=True),
        return_unchanged_outputs=_flag(inputs, "return_unchanged_outputs", default=True),
        output_tokens_per_response=_flag(inputs, "return_num_output_tokens", default=False),
        cumulative_logprob=_flag(inputs, "return_cumulative_logprob", default=False),
        unfinished_reason="None" if _flag(inputs, "return_finish_reason", default=False) else "",
        lora_name=lora_name or None,
        lora_path=_text(inputs, "lora_path"),
    )


def _text(inputs: Mapping[str, np.ndarray], name: str) -> str | None:
    """A string input's value; None when it is absent or sent empty."""
    return (_scalar(inputs[name]) or None) if name in inputs else None


def _flag(inputs: Mapping[str, np.ndarray], name: str, default: bool) -> bool:
    """A BOOL input's value; `default` when it was not sent."""
    return bool(_scalar(inputs[name])) if name in inputs else default


def _token_ids(inputs: Mapping[str, np.ndarray]) -> list[int]:
    return [int(token) for token in inputs["input_ids"].reshape(-1)]


def _priority(inputs: Mapping[str, np.ndarray]) -> int:
    return int(_scalar(inputs["priority"])) if "priority" in inputs else 0


def _cache_salt(inputs: Mapping[str, np.ndarray]) -> str | None:
    """The request's prefix-cache salt; sent empty, none."""
    return (_scalar(inputs["cache_salt"]) or None) if "cache_salt" in inputs else None
