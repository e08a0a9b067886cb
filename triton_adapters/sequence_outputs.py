"""The llm model's per-response tensors for logprobs and n > 1, built from a RequestOutput.

Names follow TensorRT-LLM where the meaning matches (`cum_log_probs`, `output_log_probs`); the rest
carry what OpenAI clients need and TensorRT-LLM has no tensor for:
  * `sequence_index` INT32 [1]: which of the request's n sequences this response belongs to (one
    decoupled stream carries all of them);
  * `cum_log_probs` FP32 [1]: the sequence's cumulative logprob so far (0 when not computed);
  * `output_log_probs` FP32 [-1]: the logprob of each token in `output_token_ids` (empty when not asked);
  * `top_log_probs` BYTES [1]: JSON, one list per token in `output_token_ids` of [token_id, logprob]
    pairs, most likely first ("" when not asked);
  * `prompt_log_probs` BYTES [1]: JSON, one entry per prompt token, null for the first and otherwise
    [token_id, logprob, [[token_id, logprob], ...]] (only on a sequence's first response when asked,
    else "").
All logprobs are raw: the model's distribution before penalties, temperature and filters.
"""

from __future__ import annotations

import json

import numpy as np

from engine import RequestOutput, TokenLogprobs

OUTPUT_NAMES = ("sequence_index", "cum_log_probs", "output_log_probs", "top_log_probs", "prompt_log_probs")


def sequence_tensors(output: RequestOutput) -> dict[str, np.ndarray]:
    """Tensor name -> numpy array for the names in OUTPUT_NAMES."""
    logprobs = output.logprobs or []
    top = json.dumps([_pairs(entry) for entry in logprobs]) if output.logprobs is not None else ""
    prompt = ""
    if output.prompt_logprobs is not None:
        prompt = json.dumps(
            [None if entry is None else [entry.token_id, entry.logprob, _pairs(entry)] for entry in output.prompt_logprobs]
        )
    return {
        "sequence_index": np.array([output.index], dtype=np.int32),
        "cum_log_probs": np.array([output.cumulative_logprob or 0.0], dtype=np.float32),
        "output_log_probs": np.array([entry.logprob for entry in logprobs], dtype=np.float32),
        "top_log_probs": np.array([top.encode("utf-8")], dtype=np.object_),
        "prompt_log_probs": np.array([prompt.encode("utf-8")], dtype=np.object_),
    }


def _pairs(entry: TokenLogprobs) -> list[list[float]]:
    return [[token, logprob] for token, logprob in entry.top]
