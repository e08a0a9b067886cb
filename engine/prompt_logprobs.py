"""Prompt logprobs: the raw log probability of each prompt token given the tokens before it.

Computed from the hidden states of the prefill chunk being run (row p predicts token p + 1), only for
requests that asked, in slices so a long chunk never materialises a [chunk, vocab] tensor at once.
Like vLLM, a request asking for prompt logprobs does not read the prefix cache (the engine gives it
a private cache salt): a cached token has no hidden state in this step to take logits from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from engine.outputs import TokenLogprobs
from engine.request import Request
from engine.sampler import gather_logprobs
from engine.sampling_batch import to_token_logprobs
from engine.scheduler import ScheduledChunk

# Rows of logits materialised at once ([rows, vocab] float32).
_SLICE_ROWS = 256


@dataclass
class PromptLogprobsChunk:
    """Prompt logprobs computed in one step for one request."""

    # The request (the engine appends `entries` to request.prompt_logprobs).
    request: Request
    # Prompt position of entries[0]; entries cover consecutive positions from there.
    first_position: int
    entries: list[TokenLogprobs]


def compute_prompt_logprobs(
    chunks: Sequence[ScheduledChunk],
    hidden: torch.Tensor,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
) -> list[PromptLogprobsChunk]:
    """For each chunk whose request wants prompt logprobs and which covers prompt tokens."""
    results: list[PromptLogprobsChunk] = []
    row_start = 0
    for chunk in chunks:
        request = chunk.request
        num_top = request.params.prompt_logprobs
        begin = chunk.num_computed_before
        # Rows predicting prompt tokens begin + 1 .. min(begin + num_tokens, num_prompt) - 1.
        end = min(begin + chunk.num_tokens, request.num_prompt_tokens - 1)
        # Complete already: copied from the first of n sequences, or recomputed after a preemption.
        done = len(request.prompt_logprobs) >= request.num_prompt_tokens
        if num_top is not None and end > begin and not done:
            entries: list[TokenLogprobs] = []
            for start in range(begin, end, _SLICE_ROWS):
                stop = min(start + _SLICE_ROWS, end)
                rows = hidden[row_start + start - begin : row_start + stop - begin]
                logprobs = compute_logits(rows).float().log_softmax(dim=-1)
                targets = torch.tensor(
                    request.prompt_token_ids[start + 1 : stop + 1], dtype=torch.int64, device=logprobs.device
                )
                ids, values = gather_logprobs(logprobs, targets, num_top)
                ranks = (logprobs >= values[:, :1]).sum(dim=-1)
                entries.extend(
                    to_token_logprobs(row_ids, row_values, num_top, rank)
                    for row_ids, row_values, rank in zip(ids.tolist(), values.tolist(), ranks.tolist(), strict=True)
                )
            results.append(PromptLogprobsChunk(request, begin + 1, entries))
        row_start += chunk.num_tokens
    return results
