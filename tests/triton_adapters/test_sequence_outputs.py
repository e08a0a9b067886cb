"""The llm model's logprob and sequence tensors, and the frontend's reading of them, agree."""

from __future__ import annotations

import json

import numpy as np

from engine import RequestOutput, TokenLogprobs
from triton_adapters.sequence_outputs import OUTPUT_NAMES, sequence_tensors


def output(**fields: object) -> RequestOutput:
    base: dict = {
        "request_id": "r",
        "new_token_ids": [7, 8],
        "text_delta": "ab",
        "num_prompt_tokens": 3,
        "num_output_tokens": 2,
        "num_cached_tokens": 0,
        "finished": False,
        "finish_reason": None,
        "stop_reason": None,
    }
    base.update(fields)
    return RequestOutput(**base)


def test_logprobs_and_index_tensors() -> None:
    entries = [TokenLogprobs(7, -0.5, [(7, -0.5), (1, -1.5)]), TokenLogprobs(8, -2.0, [(3, -0.1), (8, -2.0)])]
    prompt = [None, TokenLogprobs(4, -3.0, [(5, -0.2)], rank=7)]
    tensors = sequence_tensors(
        output(index=2, logprobs=entries, prompt_logprobs=prompt, cumulative_logprob=-2.5), parallel=True
    )
    assert tuple(tensors) == OUTPUT_NAMES
    assert tensors["sequence_index"].tolist() == [2]
    assert tensors["cum_log_probs"].tolist() == [-2.5]
    assert tensors["output_log_probs"].tolist() == [-0.5, -2.0]
    assert json.loads(tensors["top_log_probs"][0]) == [[[7, -0.5], [1, -1.5]], [[3, -0.1], [8, -2.0]]]
    assert json.loads(tensors["prompt_log_probs"][0]) == [None, [4, -3.0, [[5, -0.2]], 7]]


def test_nothing_asked_sends_no_tensors() -> None:
    assert sequence_tensors(output(), parallel=False) == {}


def test_each_tensor_comes_only_with_what_it_carries() -> None:
    assert set(sequence_tensors(output(index=1), parallel=True)) == {"sequence_index"}
    token_only = sequence_tensors(output(logprobs=[], cumulative_logprob=None), parallel=False)
    assert set(token_only) == {"cum_log_probs", "output_log_probs", "top_log_probs"}
    assert token_only["output_log_probs"].shape == (0,) and token_only["output_log_probs"].dtype == np.float32
    assert token_only["cum_log_probs"].tolist() == [0.0]
    prompt_only = sequence_tensors(output(prompt_logprobs=[None]), parallel=False)
    assert set(prompt_only) == {"prompt_log_probs"}
