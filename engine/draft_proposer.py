"""Draft-model speculative decoding's proposer (vLLM's speculative_config {"model": ..., "num_speculative_tokens":
k}): before each step, a smaller model of the target's vocabulary (engine.draft_model) continues every
speculating sequence greedily by up to k tokens, and the target verifies them (engine.speculative).

Per request it keeps the leading tokens whose K/V its own paged cache holds. A proposal first catches those
up to the request's tokens in one varlen forward (a new request's whole prompt, else the tokens the last step
added), whose last row ranks the first draft; then k - 1 decode forwards, batched over every drafting
request, each feeding the draft just ranked. The drafts whose K/V those wrote count as computed once the
request's tokens turn out to repeat them (the target accepted them); the rest are overwritten by the next
catch-up, as rejected drafts are in the target's cache.

Catch-up forwards share one step budget of max_num_batched_tokens (a prompt beyond it is caught up over
several steps, drafting nothing until it is). The draft's blocks are allocated as a request needs them,
never preempting: a request they do not fit drafts nothing this step. They are freed when the request
finishes, is aborted or is preempted (the engine calls release).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.attention_metadata import to_device
from engine.block_manager import BlockManager
from engine.config import SpeculativeConfig
from engine.draft_model import DraftModel
from engine.request import Request


@dataclass
class DraftSequence:
    """A request's tokens in the draft's cache; the draft's BlockManager allocates its blocks."""

    # The draft cache's blocks for the request, in order; append-only until freed.
    block_ids: list[int] = field(default_factory=list)
    # Leading tokens of the request (all_token_ids) whose K/V the draft's cache holds.
    num_computed_tokens: int = 0
    # Always 0: the draft's blocks are never offered to a prefix cache (BlockManager's interface has it).
    num_published_blocks: int = 0
    # Drafts whose K/V the last proposal wrote after those tokens, the first at position num_computed_tokens.
    written_drafts: list[int] = field(default_factory=list)

    def rewind(self, token_ids: list[int]) -> None:
        """Count the written drafts that the request's tokens repeat as computed, up to the token before its
        last: the last is always fed again, as its row ranks the next draft."""
        kept = 0
        for token, written in zip(token_ids[self.num_computed_tokens :], self.written_drafts, strict=False):
            if token != written:
                break
            kept += 1
        self.num_computed_tokens = min(self.num_computed_tokens + kept, len(token_ids) - 1)
        self.written_drafts = []


@dataclass
class _Drafting:
    """A request drafting this step."""

    # Its position in propose_batch's arguments.
    index: int
    sequence: DraftSequence
    # Drafts wanted (>= 1).
    limit: int
    # Its row in the catch-up forward's output.
    row: int


class DraftModelProposer:
    """Proposes with a draft model; owns the draft's block allocation and each request's DraftSequence."""

    def __init__(self, draft: DraftModel, config: SpeculativeConfig, max_num_batched_tokens: int) -> None:
        self.draft = draft
        self.num_speculative_tokens = config.num_speculative_tokens
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_manager = BlockManager(draft.num_blocks, draft.block_size, enable_caching=False)
        # By request id: every request the draft holds tokens of (running ones only).
        self.sequences: dict[str, DraftSequence] = {}

    def propose_batch(self, requests: list[Request], limits: list[int]) -> list[list[int]]:
        """The draft's greedy continuation of each request by up to min(num_speculative_tokens, limits[i])
        tokens; [] for a request still catching up, one its blocks do not fit, or one holding a token id
        past the draft's vocabulary (the target's padding)."""
        proposals: list[list[int]] = [[] for _ in requests]
        caught_up: list[tuple[DraftSequence, list[int]]] = []
        drafting: list[_Drafting] = []
        budget = self.max_num_batched_tokens
        for index, (request, limit) in enumerate(zip(requests, limits, strict=True)):
            limit = min(limit, self.num_speculative_tokens)
            if limit <= 0:
                continue
            if budget <= 0:
                break
            sequence = self.sequences.setdefault(request.request_id, DraftSequence())
            sequence.rewind(request.all_token_ids)
            tokens = request.all_token_ids[sequence.num_computed_tokens :]
            if len(tokens) > budget:
                tokens, limit = tokens[:budget], 0
            if max(tokens) >= self.draft.vocab_size:
                continue
            # Slots for the tokens and for every draft but the last, which is ranked but never fed.
            if not self.block_manager.allocate_slots(sequence, len(tokens) + max(limit - 1, 0)):
                continue
            if limit > 0:
                drafting.append(_Drafting(index, sequence, limit, row=len(caught_up)))
            caught_up.append((sequence, tokens))
            budget -= len(tokens)
        if not caught_up:
            return proposals
        first = self.draft.greedy(
            to_device(torch.tensor([token for _, tokens in caught_up for token in tokens]), self.draft.device),
            [sequence.num_computed_tokens for sequence, _ in caught_up],
            [len(tokens) for _, tokens in caught_up],
            [sequence.block_ids for sequence, _ in caught_up],
        )
        for sequence, tokens in caught_up:
            sequence.num_computed_tokens += len(tokens)
        if not drafting:
            return proposals
        # Longest first: the requests still drafting at each decode forward are then the first rows.
        drafting.sort(key=lambda entry: -entry.limit)
        ranked = self._continue(drafting, first)
        for position, entry in enumerate(drafting):
            drafts = [column[position] for column in ranked[: entry.limit]]
            proposals[entry.index] = drafts
            entry.sequence.written_drafts = drafts[:-1]
        return proposals

    def _continue(self, drafting: list[_Drafting], first: torch.Tensor) -> list[list[int]]:
        """Feed each drafting request (sorted by limit, longest first) its drafts one at a time: column i holds
        the (i + 1)-th draft of the requests that want that many, in `drafting`'s order."""
        rows = to_device(torch.tensor([entry.row for entry in drafting]), self.draft.device)
        columns = [first[rows]]
        for fed in range(1, drafting[0].limit):
            active = [entry for entry in drafting if entry.limit > fed]
            columns.append(
                self.draft.greedy(
                    columns[-1][: len(active)],
                    [entry.sequence.num_computed_tokens + fed - 1 for entry in active],
                    [1] * len(active),
                    [entry.sequence.block_ids for entry in active],
                )
            )
        # One wait for the device, after every forward is queued.
        return [column.tolist() for column in columns]

    def release(self, request: Request) -> None:
        """Free the request's draft blocks (it finished, was aborted or was preempted)."""
        sequence = self.sequences.pop(request.request_id, None)
        if sequence is not None:
            self.block_manager.free(sequence)
