"""What the engine emits: per-step request deltas, completed requests, statistics, request errors."""

from __future__ import annotations

from dataclasses import dataclass


class InvalidRequestError(ValueError):
    """A request the engine refuses up front (empty or too long prompt, bad ids, duplicate id)."""


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full: the request is refused now and may be retried later."""


@dataclass
class RequestOutput:
    """One request's progress in one engine step: a delta, never the whole history."""

    request_id: str
    # Tokens sampled this step (a stop token id stays in; stop strings only trim text).
    new_token_ids: list[int]
    # Newly released text; the concatenation of all deltas is exactly the final text.
    text_delta: str
    # Prompt length in tokens.
    num_prompt_tokens: int
    # Output tokens so far (cumulative).
    num_output_tokens: int
    # Prompt tokens served from the prefix cache when the request was first scheduled.
    num_cached_tokens: int
    # True on the request's last output.
    finished: bool
    # "stop" | "length" | "abort"; None while running.
    finish_reason: str | None
    # The stop token id or stop string that ended the request (None for EOS, length, abort).
    stop_reason: int | str | None
    # Set when the request was failed by an engine error (finish_reason is then "abort").
    error: str | None = None
    # time.monotonic() when the request was added.
    arrival_time: float = 0.0
    # time.monotonic() when its first token was sampled (None before): TTFT = first - arrival.
    first_token_time: float | None = None


@dataclass
class CompletedRequest:
    """A finished request as LLMEngine.generate returns it."""

    request_id: str
    prompt_token_ids: list[int]
    # Every generated token, including a final stop token id.
    token_ids: list[int]
    text: str
    finish_reason: str | None
    stop_reason: int | str | None
    num_cached_tokens: int
    # Seconds from arrival to the first token (None if none was produced).
    time_to_first_token: float | None


@dataclass
class EngineStats:
    """A snapshot of the engine's counters and gauges."""

    # Requests in the running batch.
    num_running: int
    # Requests queued (new or preempted).
    num_waiting: int
    # Blocks in the KV pool.
    kv_blocks_total: int
    # Blocks with no owner (cached-but-free blocks count as free).
    kv_blocks_free: int
    # Prompt tokens looked up in the prefix cache (cumulative).
    prefix_cache_queried_tokens: int
    # Of those, tokens found (cumulative).
    prefix_cache_hit_tokens: int
    # Requests preempted for KV space (cumulative).
    num_preemptions: int
    # Prompt tokens of admitted requests (cumulative).
    prompt_tokens_total: int
    # Tokens sampled (cumulative).
    generation_tokens_total: int
