"""N-gram speculative decoding: propose a sequence's next tokens from its own history, verify them in one
forward, keep the longest prefix the model agrees with.

Verification samples a token at every draft position, exactly as a step without drafts would there (the
sequence's own temperature, top-k, top-p, min-p, logit_bias, allowed tokens; the argmax when greedy), and
keeps the drafts up to the first the sample differs from, then that sample. For a draft that is one
certain token (n-gram drafts are), this is rejection sampling: a draft d is kept with probability p(d),
and a differing sample is distributed as p without d, renormalised; so the tokens are distributed as
without drafts, and greedy ones are the same tokens.

Which sequences speculate: those whose distribution at a position does not depend on the tokens the same
step adds before it (no penalties, bad words or pending min_tokens), with no grammar, logprobs, own seed
(a seeded request's tokens would then depend on its drafts, which depend on the batch's free blocks and
budget) or n > 1. The others run one token a step beside them.
"""

from __future__ import annotations

import numpy as np

from engine.config import SpeculativeConfig
from engine.request import Request


def can_speculate(request: Request) -> bool:
    """Its next tokens may be verified together (see the module docstring)."""
    params = request.params
    return (
        request.generator is None
        and request.parent_id is None
        and request.num_logprobs is None
        and params.structured_outputs is None
        and not params.has_penalties
        and not request.bad_words_token_ids
        and request.num_output_tokens >= params.min_tokens
    )


class NgramProposer:
    """Prompt-lookup drafts: the tokens that followed the latest earlier occurrence of the sequence's last n
    tokens, n from prompt_lookup_max down to prompt_lookup_min (the longest match wins)."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config

    def propose(self, token_ids: list[int], max_drafts: int) -> list[int]:
        """Up to min(num_speculative_tokens, max_drafts) tokens; [] when no n-gram recurs."""
        limit = min(self.config.num_speculative_tokens, max_drafts)
        if limit <= 0 or len(token_ids) <= self.config.prompt_lookup_min:
            return []
        tokens = np.asarray(token_ids, dtype=np.int64)
        for n in range(min(self.config.prompt_lookup_max, len(tokens) - 1), self.config.prompt_lookup_min - 1, -1):
            # Windows that start early enough to be followed by at least one token, the suffix's own excluded.
            windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)
            matches = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
            if matches.size:
                start = int(matches[-1]) + n
                return token_ids[start : start + limit]
        return []


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
