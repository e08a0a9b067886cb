"""Token sampling for a batch of rows, vectorised over the batch and the vocabulary.

Order (vLLM v1): raw logprobs -> allowed_token_ids -> banned tokens (min_tokens, bad words) ->
logit_bias -> penalties -> greedy rows take the argmax -> temperature -> min-p -> top-k -> top-p ->
draw. Drawing uses the exponential race (argmax of p / E with E ~ Exp(1)), which lets a seeded
request draw its own E from its own generator: its tokens do not depend on which other requests
share the batch.

Logprobs follow vLLM's default `logprobs_mode="raw_logprobs"`: they are the log_softmax of the
logits as the model produced them (after a structured-output mask, applied before the sampler),
before penalties, bias, temperature and the top-k/top-p/min-p filters. They are computed only for
the rows that asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Penalties:
    """Presence/frequency/repetition penalties for the rows that use any of them."""

    # [P] int64: the rows of the batch these settings belong to.
    rows: torch.Tensor
    # [P, Lp] int64: each row's prompt token ids, padded with vocab_size.
    prompt_tokens: torch.Tensor
    # [P, Lo] int64: each row's output token ids so far, padded with vocab_size.
    output_tokens: torch.Tensor
    # [P] float32 each.
    presence: torch.Tensor
    frequency: torch.Tensor
    repetition: torch.Tensor


@dataclass
class SparseLogits:
    """(row, token) pairs of a [N, V] tensor, with a value each (logit_bias, allowed tokens)."""

    # [M] int64 each.
    rows: torch.Tensor
    tokens: torch.Tensor
    # [M] float32; unused for allowed tokens.
    values: torch.Tensor


@dataclass
class SamplingBatch:
    """Per-row sampling settings, built by the runner for the rows whose logits were computed."""

    # [N] float32: 0 marks a greedy row.
    temperature: torch.Tensor
    # [N] float32 in (0, 1].
    top_p: torch.Tensor
    # [N] int64: 0 = off.
    top_k: torch.Tensor
    # [N] float32 in [0, 1].
    min_p: torch.Tensor
    # One entry per row: the request's own generator, or None for the shared one.
    generators: list[torch.Generator | None]
    # (row, token) pairs forced to -inf (EOS/stop ids before min_tokens, bad words), two [M] int64 tensors.
    suppressed_rows: torch.Tensor
    suppressed_tokens: torch.Tensor
    # Fast paths: every row greedy; no row uses top-k / top-p / min-p.
    all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    # Rows restricted to allowed_token_ids: [R] int64 rows, plus the (row, token) pairs they allow.
    restricted_rows: torch.Tensor | None = None
    allowed: SparseLogits | None = None
    # logit_bias entries of every row.
    logit_bias: SparseLogits | None = None
    penalties: Penalties | None = None
    # [L] int64: rows that want logprobs, and the most top logprobs any of them wants.
    logprob_rows: torch.Tensor | None = None
    num_logprobs: int = 0


@dataclass
class SamplerOutput:
    """One sampled token per row, plus raw logprobs for the rows that asked."""

    # [N] int64.
    token_ids: torch.Tensor
    # [L, 1 + num_logprobs] int64 / float32, rows in SamplingBatch.logprob_rows order: column 0 is
    # the sampled token, then the most likely tokens in order. None when no row asked.
    logprob_token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None


class Sampler:
    """Chooses one token per row of a [N, V] float32 logits tensor."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        """`logits` may be modified in place."""
        raw_logprobs = None
        if batch.logprob_rows is not None:
            raw_logprobs = logits[batch.logprob_rows].log_softmax(dim=-1)
        logits = apply_constraints(logits, batch)
        tokens = self._sample(logits, batch)
        if raw_logprobs is None or batch.logprob_rows is None:
            return SamplerOutput(tokens)
        token_ids, values = gather_logprobs(raw_logprobs, tokens[batch.logprob_rows], batch.num_logprobs)
        return SamplerOutput(tokens, token_ids, values)

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        greedy = logits.argmax(dim=-1)
        if batch.all_greedy:
            return greedy
        is_greedy = batch.temperature == 0
        temperature = torch.where(is_greedy, torch.ones_like(batch.temperature), batch.temperature)
        logits = logits / temperature.unsqueeze(1)
        if batch.need_min_p:
            logits = apply_min_p(logits, batch.min_p)
        if batch.need_top_k or batch.need_top_p:
            logits = apply_top_k_top_p(
                logits, batch.top_k if batch.need_top_k else None, batch.top_p if batch.need_top_p else None
            )
        probs = logits.softmax(dim=-1)
        sampled = (probs / self._exponential(probs, batch.generators)).argmax(dim=-1)
        return torch.where(is_greedy, greedy, sampled)

    def _exponential(self, probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
        noise = torch.empty_like(probs).exponential_(generator=self._generator)
        for row, generator in enumerate(generators):
            if generator is not None:
                noise[row].exponential_(generator=generator)
        return noise


def apply_constraints(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Allowed tokens, banned tokens, logit_bias and penalties, in vLLM's order (in place)."""
    if batch.restricted_rows is not None and batch.allowed is not None:
        blocked = torch.zeros_like(logits, dtype=torch.bool)
        blocked[batch.restricted_rows] = True
        blocked[batch.allowed.rows, batch.allowed.tokens] = False
        logits.masked_fill_(blocked, float("-inf"))
    if batch.suppressed_rows.numel():
        logits[batch.suppressed_rows, batch.suppressed_tokens] = float("-inf")
    if batch.logit_bias is not None:
        bias = batch.logit_bias
        logits.index_put_((bias.rows, bias.tokens), bias.values, accumulate=True)
    if batch.penalties is not None:
        rows = batch.penalties.rows
        logits[rows] = apply_penalties(logits[rows], batch.penalties)
    return logits


def apply_penalties(logits: torch.Tensor, penalties: Penalties) -> torch.Tensor:
    """vLLM's penalties on [P, V] logits: repetition over prompt + output tokens, then frequency
    (times the output count) and presence (once per output token) subtracted."""
    rows, vocab = logits.shape
    output_counts = torch.zeros((rows, vocab + 1), dtype=logits.dtype, device=logits.device)
    ones = torch.ones_like(penalties.output_tokens, dtype=logits.dtype)
    output_counts.scatter_add_(1, penalties.output_tokens, ones)
    output_counts = output_counts[:, :vocab]
    seen = torch.zeros((rows, vocab + 1), dtype=torch.bool, device=logits.device)
    seen.scatter_(1, penalties.prompt_tokens, True)
    seen = seen[:, :vocab] | (output_counts > 0)
    repetition = torch.where(seen, penalties.repetition.unsqueeze(1), torch.ones_like(logits))
    logits = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = logits - penalties.frequency.unsqueeze(1) * output_counts
    return logits - penalties.presence.unsqueeze(1) * (output_counts > 0).to(logits.dtype)


def gather_logprobs(
    logprobs: torch.Tensor, token_ids: torch.Tensor, num_top: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """[M, V] logprobs -> ([M, 1 + num_top] ids, same-shape values): the chosen token, then the top ones."""
    top_values, top_ids = logprobs.topk(num_top, dim=-1)
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    return torch.cat([token_ids.unsqueeze(1), top_ids], dim=1), torch.cat([chosen, top_values], dim=1)


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Mask tokens whose probability is below min_p times the row's highest probability."""
    probs = logits.softmax(dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(1)
    return logits.masked_fill(probs < threshold, float("-inf"))


def apply_top_k_top_p(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None
) -> torch.Tensor:
    """Keep each row's top_k most likely tokens (0 = all), then its smallest nucleus reaching top_p."""
    sorted_logits, order = logits.sort(dim=-1, descending=False)
    vocab = logits.shape[-1]
    if top_k is not None:
        k = torch.where(top_k > 0, top_k, torch.full_like(top_k, vocab)).clamp(max=vocab)
        # Ascending order: the k-th largest sits at index vocab - k.
        kth = sorted_logits.gather(1, (vocab - k).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
    if top_p is not None:
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - top_p).unsqueeze(1)
        drop[:, -1] = False  # the most likely token always survives
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)
