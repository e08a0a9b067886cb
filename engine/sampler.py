"""Token sampling for a batch of rows, vectorised over the batch and the vocabulary.

Order (vLLM v1): suppress masked tokens -> greedy rows take the argmax -> temperature -> min-p ->
top-k -> top-p -> draw. Drawing uses the exponential race (argmax of p / E with E ~ Exp(1)), which
lets a seeded request draw its own E from its own generator: its tokens do not depend on which other
requests share the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    # (row, token) pairs forced to -inf (EOS/stop ids before min_tokens), as two [M] int64 tensors.
    suppressed_rows: torch.Tensor
    suppressed_tokens: torch.Tensor
    # Fast paths: every row greedy; no row uses top-k / top-p / min-p.
    all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool


class Sampler:
    """Chooses one token per row of a [N, V] float32 logits tensor."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """[N] int64 token ids. `logits` may be modified in place."""
        if batch.suppressed_rows.numel():
            logits[batch.suppressed_rows, batch.suppressed_tokens] = float("-inf")
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
