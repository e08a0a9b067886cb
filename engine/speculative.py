"""N-gram speculative decoding: propose a sequence's next tokens from its own history, verify them in one
forward, keep the longest prefix the model agrees with.

Which sequences speculate: greedy ones whose next token is the plain argmax of the model's logits (no
penalties, biases, allowed or banned tokens, grammar, logprobs, pending min_tokens, n > 1), so that
verification is exact: every token a step yields is the one a step without drafts would have chosen.
Sampled sequences run without drafts (vLLM verifies those by rejection sampling; that is not done here).
"""

from __future__ import annotations

import numpy as np

from engine.config import SpeculativeConfig
from engine.request import Request


def can_speculate(request: Request) -> bool:
    """Its next tokens are the argmax of the raw logits, position after position."""
    params = request.params
    return (
        params.temperature == 0.0
        and request.parent_id is None
        and request.num_logprobs is None
        and params.structured_outputs is None
        and params.presence_penalty == 0.0
        and params.frequency_penalty == 0.0
        and params.repetition_penalty == 1.0
        and not params.logit_bias
        and params.allowed_token_ids is None
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
    """The tokens a verified step yields: the drafts up to the first the model disagrees with, then the
    model's own token there (or after the last draft, when it agrees with all). `target_token_ids` holds
    the model's choice at each position: len(draft_token_ids) + 1 of them."""
    assert len(target_token_ids) == len(draft_token_ids) + 1, (
        f"{len(draft_token_ids)} drafts need {len(draft_token_ids) + 1} targets, got {len(target_token_ids)}"
    )
    accepted = 0
    while accepted < len(draft_token_ids) and draft_token_ids[accepted] == target_token_ids[accepted]:
        accepted += 1
    return target_token_ids[: accepted + 1]
