"""The llm model's per-response tensors for logprobs and n > 1, built from a RequestOutput.

Names follow TensorRT-LLM where the meaning matches (`cum_log_probs`, `output_log_probs`); the rest
carry what OpenAI clients need and TensorRT-LLM has no tensor for:
  * `sequence_index` INT32 [1]: which of the request's n sequences this response belongs to (one
    decoupled stream carries all of them); sent when n > 1, absent means sequence 0;
  * `cum_log_probs` FP32 [1]: the sequence's cumulative logprob so far;
  * `output_log_probs` FP32 [-1]: the logprob of each token in `output_token_ids`;
  * `top_log_probs` BYTES [1]: JSON, one list per token in `output_token_ids` of [token_id, logprob]
    pairs, most likely first;
    (these three on the responses that carry tokens when logprobs were asked)
  * `prompt_log_probs` BYTES [1]: JSON, one entry per prompt token, null for the first and otherwise
    [token_id, logprob, [[token_id, logprob], ...], rank] (rank: the token's in the vocabulary, 1 the
    most likely; on a sequence's first response when asked).
A tensor with nothing to say is left out rather than sent empty: every tensor costs each hop of a
streamed token (the llm stub, the ensemble, postprocess, gRPC, the client's parse). Leaving these five
(and an empty `prompt_text`) out cut the served path's CPU per token outside the engine by a sixth
(64 streams on 2 cores: 1.19 -> 1.01 ms over tritonserver, the frontend, postprocess, the llm sender).
All logprobs are raw: the model's distribution before penalties, temperature and filters.
"""

from __future__ import annotations

import json

import numpy as np

from engine import RequestOutput, TokenLogprobs

OUTPUT_NAMES = ("sequence_index", "cum_log_probs", "output_log_probs", "top_log_probs", "prompt_log_probs")


def sequence_tensors(output: RequestOutput, parallel: bool) -> dict[str, np.ndarray]:
    """Tensor name -> numpy array for those of OUTPUT_NAMES this response carries (see the module
    docstring); `parallel`: the request has n > 1 sequences."""
    tensors = {}
    if parallel:
        tensors["sequence_index"] = np.array([output.index], dtype=np.int32)
    if output.logprobs is not None:
        top = json.dumps([_pairs(entry) for entry in output.logprobs])
        tensors["cum_log_probs"] = np.array([output.cumulative_logprob or 0.0], dtype=np.float32)
        tensors["output_log_probs"] = np.array([entry.logprob for entry in output.logprobs], dtype=np.float32)
        tensors["top_log_probs"] = np.array([top.encode("utf-8")], dtype=np.object_)
    if output.prompt_logprobs is not None:
        prompt = json.dumps(
            [
                None if entry is None else [entry.token_id, entry.logprob, _pairs(entry), entry.rank]
                for entry in output.prompt_logprobs
            ]
        )
        tensors["prompt_log_probs"] = np.array([prompt.encode("utf-8")], dtype=np.object_)
    return tensors


def _pairs(entry: TokenLogprobs) -> list[list[float]]:
    return [[token, logprob] for token, logprob in entry.top]
