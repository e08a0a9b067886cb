"""Builds the sampler's per-row settings from the scheduled requests, and reads its logprobs back.

Everything here is small per-request bookkeeping (lists of token ids, bias entries, bad words); the
per-vocabulary work happens in the sampler, vectorised over the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from engine.outputs import TokenLogprobs
from engine.request import Request
from engine.sampler import Penalties, SamplerOutput, SamplingBatch, SparseLogits

ToDevice = Callable[[torch.Tensor], torch.Tensor]


def build_sampling_batch(requests: Sequence[Request], vocab_size: int, to_device: ToDevice) -> SamplingBatch:
    """One row per request, in order."""
    params = [request.params for request in requests]

    def column(values: list, dtype: torch.dtype) -> torch.Tensor:
        return to_device(torch.tensor(values, dtype=dtype))

    suppressed_rows, suppressed_tokens = _banned_tokens(requests)
    logprob_rows = [row for row, request in enumerate(requests) if request.num_logprobs is not None]
    # A greedy row's filters are off: the argmax is its token, and a filter would only cost (or, a top_k
    # past every sampled row's, ask for more candidates than they gathered).
    top_p = [1.0 if p.greedy else p.top_p for p in params]
    top_k = [0 if p.greedy else p.top_k for p in params]
    min_p = [0.0 if p.greedy else p.min_p for p in params]
    return SamplingBatch(
        temperature=column([0.0 if p.greedy else p.temperature for p in params], torch.float32),
        top_p=column(top_p, torch.float32),
        top_k=column(top_k, torch.int64),
        min_p=column(min_p, torch.float32),
        generators=[request.generator for request in requests],
        suppressed_rows=column(suppressed_rows, torch.int64),
        suppressed_tokens=column(suppressed_tokens, torch.int64),
        all_greedy=all(p.greedy for p in params),
        any_greedy=any(p.greedy for p in params),
        max_top_k=max(top_k, default=0),
        need_top_p=any(value < 1.0 for value in top_p),
        need_min_p=any(value > 0.0 for value in min_p),
        restricted_rows=_restricted_rows(requests, column),
        allowed=_allowed(requests, column),
        logit_bias=_logit_bias(requests, column),
        penalties=_penalties(requests, vocab_size, to_device),
        logprob_rows=column(logprob_rows, torch.int64) if logprob_rows else None,
        num_logprobs=max((requests[row].num_logprobs or 0 for row in logprob_rows), default=0),
    )


def token_logprobs(
    requests: Sequence[Request], batch: SamplingBatch, output: SamplerOutput
) -> list[TokenLogprobs | None]:
    """Per request: the sampled token's raw logprob with its own number of top entries, or None."""
    result: list[TokenLogprobs | None] = [None] * len(requests)
    if batch.logprob_rows is None or output.logprob_token_ids is None or output.logprobs is None:
        return result
    ids, values = output.logprob_token_ids.tolist(), output.logprobs.tolist()
    for position, row in enumerate(batch.logprob_rows.tolist()):
        result[row] = to_token_logprobs(ids[position], values[position], requests[row].num_logprobs or 0)
    return result


def to_token_logprobs(ids: list[int], values: list[float], num_top: int, rank: int | None = None) -> TokenLogprobs:
    """One gathered row (chosen token first, then the top ones) -> TokenLogprobs with num_top entries."""
    top = list(zip(ids[1 : 1 + num_top], values[1 : 1 + num_top], strict=True))
    return TokenLogprobs(token_id=ids[0], logprob=values[0], top=top, rank=rank)


def _banned_tokens(requests: Sequence[Request]) -> tuple[list[int], list[int]]:
    """(row, token) pairs masked this step: EOS/stop ids before min_tokens, and bad words' last tokens
    where the output already ends with the word's other tokens (vLLM: output tokens only)."""
    rows: list[int] = []
    tokens: list[int] = []
    for row, request in enumerate(requests):
        banned: list[int] = []
        if request.num_output_tokens < request.params.min_tokens:
            banned.extend(request.min_tokens_suppressed)
        if request.bad_words_token_ids:
            output = request.output_token_ids
            for word in request.bad_words_token_ids:
                prefix = list(word[:-1])
                if len(prefix) <= len(output) and (
                    not prefix or output[len(output) - len(prefix) :] == prefix
                ):
                    banned.append(word[-1])
        unique = list(dict.fromkeys(banned))
        rows.extend([row] * len(unique))
        tokens.extend(unique)
    return rows, tokens


def _restricted_rows(requests: Sequence[Request], column: Callable) -> torch.Tensor | None:
    rows = [row for row, request in enumerate(requests) if request.params.allowed_token_ids is not None]
    return column(rows, torch.int64) if rows else None


def _allowed(requests: Sequence[Request], column: Callable) -> SparseLogits | None:
    rows: list[int] = []
    tokens: list[int] = []
    for row, request in enumerate(requests):
        allowed = request.params.allowed_token_ids
        if allowed is not None:
            rows.extend([row] * len(allowed))
            tokens.extend(allowed)
    if not rows:
        return None
    return SparseLogits(column(rows, torch.int64), column(tokens, torch.int64), column([], torch.float32))


def _logit_bias(requests: Sequence[Request], column: Callable) -> SparseLogits | None:
    rows: list[int] = []
    tokens: list[int] = []
    values: list[float] = []
    for row, request in enumerate(requests):
        for token, bias in request.params.logit_bias.items():
            rows.append(row)
            tokens.append(token)
            values.append(bias)
    if not rows:
        return None
    return SparseLogits(column(rows, torch.int64), column(tokens, torch.int64), column(values, torch.float32))


def _penalties(requests: Sequence[Request], vocab_size: int, to_device: ToDevice) -> Penalties | None:
    rows = [row for row, request in enumerate(requests) if request.params.has_penalties]
    if not rows:
        return None
    chosen = [requests[row] for row in rows]

    def padded(sequences: list[list[int]]) -> torch.Tensor:
        # Padding with vocab_size lands in a scratch bin the sampler drops.
        width = max(max((len(tokens) for tokens in sequences), default=0), 1)
        table = torch.full((len(sequences), width), vocab_size, dtype=torch.int64)
        for index, tokens in enumerate(sequences):
            table[index, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        return to_device(table)

    def column(values: list[float]) -> torch.Tensor:
        return to_device(torch.tensor(values, dtype=torch.float32))

    return Penalties(
        rows=to_device(torch.tensor(rows, dtype=torch.int64)),
        prompt_tokens=padded([request.prompt_token_ids for request in chosen]),
        output_tokens=padded([request.output_token_ids for request in chosen]),
        presence=column([request.params.presence_penalty for request in chosen]),
        frequency=column([request.params.frequency_penalty for request in chosen]),
        repetition=column([request.params.repetition_penalty for request in chosen]),
    )
