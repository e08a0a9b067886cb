"""The engine's state of one request, shared by the scheduler, block manager and output processing."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from engine.outputs import TokenLogprobs
from engine.pooling import PooledState, PoolingParams
from engine.sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued: new, or preempted and waiting to be recomputed
    RUNNING = "running"  # in the running batch, owns KV blocks
    FINISHED = "finished"  # done; owns nothing


@dataclass
class Request:
    """A request's tokens and progress. Only the engine thread touches it."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    # Lower runs first (vLLM semantics); ties go to the earlier arrival.
    priority: int
    # Monotonic admission counter: FCFS order and the tie-breaker of priority order.
    arrival_seq: int
    # time.monotonic() at add_request.
    arrival_time: float
    # Mixed into the prefix-cache hash so different salts never share blocks.
    cache_salt: str | None = None
    # The LoRA adapter (EngineConfig.lora_modules) this request runs with; None: the base model.
    lora_name: str | None = None
    # An embedding request (engine.pooling): it prefills its prompt and ends with the pooled vector, never
    # sampling (`params` are then inert defaults); `pooled` gathers its chunks' rows.
    pooling: PoolingParams | None = None
    pooled: PooledState | None = None
    # The request's own generator when params.seed is set.
    generator: torch.Generator | None = None
    # Token ids masked while fewer than params.min_tokens were generated (EOS unless ignored, stop ids).
    min_tokens_suppressed: tuple[int, ...] = ()
    # The client's request id when this is one of its n sequences (request_id is then the sequence's own).
    parent_id: str | None = None
    # Which of the parent's sequences this is.
    index: int = 0
    # params.bad_words as token id sequences (each word with and without a leading space).
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    # Top logprobs to return per sampled token; 0 when only the sampled token's logprob is needed
    # (best_of ranks sequences by it); None = compute none.
    num_logprobs: int | None = None
    # Sum of the sampled tokens' raw logprobs (kept when num_logprobs is set).
    cumulative_logprob: float = 0.0
    # Prompt logprobs gathered so far across prefill chunks (params.prompt_logprobs); index = position.
    prompt_logprobs: list[TokenLogprobs | None] = field(default_factory=list)
    # Prompt followed by every generated token; append-only.
    all_token_ids: list[int] = field(default_factory=list)
    # Speculative tokens proposed for the next step (engine.speculative): not part of all_token_ids; the
    # scheduler takes them into that step's chunk (or drops them) and leaves this empty.
    draft_token_ids: list[int] = field(default_factory=list)
    # Tokens whose K/V are in the cache. After a preemption it restarts at 0 (recompute).
    num_computed_tokens: int = 0
    # Physical KV blocks in order; append-only while running, emptied on preemption/finish.
    block_ids: list[int] = field(default_factory=list)
    # Chained hashes of the request's full blocks so far (valid forever: tokens are append-only).
    block_hashes: list[int] = field(default_factory=list)
    # Leading blocks of block_ids already offered to the prefix cache (reset when blocks are freed).
    num_published_blocks: int = 0
    status: RequestStatus = RequestStatus.WAITING
    # Prompt tokens served from the prefix cache at first scheduling (-1 before it).
    num_cached_tokens: int = -1
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    first_token_time: float | None = None

    def __post_init__(self) -> None:
        if not self.all_token_ids:
            self.all_token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids) :]

    @property
    def output_id(self) -> str:
        """The id its outputs carry: the client's request id."""
        return self.parent_id if self.parent_id is not None else self.request_id

    @property
    def sort_key(self) -> tuple[int, int]:
        """Scheduling order: lower priority value first, then earlier arrival."""
        return (self.priority, self.arrival_seq)
