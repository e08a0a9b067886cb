"""Speculative decoding: propose a sequence's next tokens cheaply (n-gram lookup in its own history here, or
a draft model: engine.draft_proposer), verify them in one forward, keep the longest prefix the model agrees
with.

Verification samples a token at every draft position, exactly as a step without drafts would there (the
sequence's own temperature, top-k, top-p, min-p, logit_bias, allowed tokens; the argmax when greedy), and
keeps the drafts up to the first the sample differs from, then that sample. For a draft that is one
certain token (n-gram drafts are, and so are a draft model's greedy ones), this is rejection sampling: a
draft d is kept with probability p(d), and a differing sample is distributed as p without d, renormalised;
so the tokens are distributed as without drafts, and greedy ones are the same tokens.

Which sequences speculate: those whose distribution at a position does not depend on the tokens the same
step adds before it (no penalties, bad words or pending min_tokens), with no grammar, own seed (a seeded
request's tokens would then depend on its drafts, which depend on the batch's free blocks and budget) or
n > 1; never an embedding request (it samples nothing: drafts would be pooled with its prompt). The others
run one token a step beside them. Logprobs come from each position's own row.
"""

from __future__ import annotations

from typing import Protocol

from engine.config import SpeculativeConfig
from engine.request import Request


class Proposer(Protocol):
    """What the engine asks of a proposer before each step."""

    def propose_batch(self, requests: list[Request], limits: list[int]) -> list[list[int]]:
        """For each request (at its last token, able to speculate) up to min(num_speculative_tokens,
        limits[i]) draft tokens to follow it; [] for none."""
        ...

    def release(self, request: Request) -> None:
        """Forget the request (finished, aborted or preempted) and free what the proposer holds for it."""
        ...


def can_speculate(request: Request) -> bool:
    """Its next tokens may be verified together (see the module docstring)."""
    params = request.params
    return (
        request.pooling is None
        and request.generator is None
        and request.parent_id is None
        and params.structured_outputs is None
        and not params.has_penalties
        and not request.bad_words_token_ids
        and request.num_output_tokens >= params.min_tokens
    )


class NgramProposer:
    """Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the sequence's last n
    tokens, n from prompt_lookup_max down to prompt_lookup_min (the longest match wins). It runs for every
    running sequence before every step, so it walks back from the earlier occurrences of the last token
    only: 800 tokens without a match took ~120 us in numpy sliding windows, 9 us here."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    def propose_batch(self, requests: list[Request], limits: list[int]) -> list[list[int]]:
        return [self.propose(request.all_token_ids, limit) for request, limit in zip(requests, limits, strict=True)]

    def release(self, request: Request) -> None:
        """Nothing to free: the proposer reads each request's tokens afresh every step."""

    def propose(self, token_ids: list[int], max_drafts: int) -> list[int]:
        """Up to min(num_speculative_tokens, max_drafts) tokens; [] when no n-gram recurs."""
        limit = min(self.config.num_speculative_tokens, max_drafts)
        length = len(token_ids)
        if limit <= 0 or length <= self.config.prompt_lookup_min:
            return []
        longest = min(self.config.prompt_lookup_max, length - 1)
        last = token_ids[-1]
        # Earlier positions holding the last token (list.index scans in C), each the end of a candidate
        # match; a match must be followed by a token, so the last position is not one.
        ends = []
        start = 0
        while True:
            try:
                start = token_ids.index(last, start, length - 1) + 1
            except ValueError:
                break
            ends.append(start - 1)
        best_end, best_size = -1, 0
        for end in reversed(ends):  # latest first: of equal matches, the latest wins
            size = 1
            while size < longest and size <= end and token_ids[end - size] == token_ids[length - 1 - size]:
                size += 1
            if size > best_size:
                best_end, best_size = end, size
                if size == longest:
                    break
        if best_size < self.config.prompt_lookup_min:
            return []
        return token_ids[best_end + 1 : best_end + 1 + limit]


def accepted_tokens(draft_token_ids: list[int], target_token_ids: list[int]) -> list[int]:
    """The tokens a verified step yields: the drafts up to the first the model's sample differs from, then
    that sample (or the one after the last draft, when all agree). `target_token_ids` holds the token
    sampled at each position: len(draft_token_ids) + 1 of them."""
    assert len(target_token_ids) == len(draft_token_ids) + 1, (
        f"{len(draft_token_ids)} drafts need {len(draft_token_ids) + 1} targets, got {len(target_token_ids)}"
    )
    accepted = 0
    while accepted < len(draft_token_ids) and draft_token_ids[accepted] == target_token_ids[accepted]:
        accepted += 1
    return target_token_ids[: accepted + 1]
