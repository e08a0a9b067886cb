"""What the engine emits: per-step request deltas, completed requests, statistics, request errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


class InvalidRequestError(ValueError):
    """A request the engine refuses up front (empty or too long prompt, bad ids, duplicate id)."""


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full: the request is refused now and may be retried later."""


class EngineDeadError(RuntimeError):
    """The engine's loop thread has stopped (a bug): nothing more will be served until a restart."""

    def __init__(self) -> None:
        super().__init__("the engine is unavailable: its loop has stopped (see the server log)")


@dataclass
class TokenLogprobs:
    """Raw log probabilities (before penalties, temperature and filters) at one position."""

    # The token at this position (sampled, or the prompt's) and its logprob.
    token_id: int
    logprob: float
    # The most likely tokens there, most likely first, as (token id, logprob); as many as asked.
    top: list[tuple[int, float]]
    # The token's rank in the vocabulary: how many tokens are at least as likely, itself included (1: the
    # most likely), as vLLM counts it. Computed for prompt logprobs only: vLLM returns it there, OpenAI's
    # shapes for sampled tokens have no place for it.
    rank: int | None = None


@dataclass
class RequestOutput:
    """One sequence's progress in one engine step: a delta, never the whole history.

    A request with n > 1 (or best_of) has several sequences; each output names its `index`, a
    sequence is done when its output carries a finish_reason, and only the request's very last output
    has `finished` set.
    """

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
    # True on the request's last output (of all its sequences).
    finished: bool
    # "stop" | "length" | "abort" on the sequence's last output; None while it runs.
    finish_reason: str | None
    # The stop token id or stop string that ended the request (None for the tokenizer's EOS, length,
    # abort; the checkpoint's other EOS ids are named, as vLLM names them).
    stop_reason: int | str | None
    # Set when the request was failed by an engine error (finish_reason is then "abort").
    error: str | None = None
    # With `error`, when the engine refused the request as it took it up: "invalid" (InvalidRequestError,
    # e.g. an adapter directory that holds no adapter: the client's fault) or "busy" (EngineOverloadedError,
    # e.g. every LoRA adapter slot in use: retry later); None for an engine failure.
    rejected: str | None = None
    # time.monotonic() when the request was added.
    arrival_time: float = 0.0
    # time.monotonic() when its first token was sampled (None before): TTFT = first - arrival.
    first_token_time: float | None = None
    # Which of the request's sequences this is (0..n-1).
    index: int = 0
    # One entry per new token when params.logprobs is set, else None.
    logprobs: list[TokenLogprobs] | None = None
    # With the sequence's first output when params.prompt_logprobs is set: one entry per prompt
    # token, None for the first (nothing predicts it).
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # Sum of the sampled tokens' logprobs so far, when logprobs (or best_of) made the engine compute them.
    cumulative_logprob: float | None = None
    # An embedding request's vector (engine.pooling), on its one and final output; None for generation.
    embedding: list[float] | None = None


def merge_outputs(earlier: RequestOutput, later: RequestOutput) -> RequestOutput:
    """One output equivalent to `earlier` followed by `later` of the same sequence (for consumers that
    answer once at the end)."""
    logprobs = None
    if earlier.logprobs is not None or later.logprobs is not None:
        logprobs = (earlier.logprobs or []) + (later.logprobs or [])
    return dataclasses.replace(
        later,
        new_token_ids=earlier.new_token_ids + later.new_token_ids,
        text_delta=earlier.text_delta + later.text_delta,
        logprobs=logprobs,
        prompt_logprobs=earlier.prompt_logprobs
        if earlier.prompt_logprobs is not None
        else later.prompt_logprobs,
        first_token_time=earlier.first_token_time or later.first_token_time,
        # An abort's output carries none; the sum so far still holds.
        cumulative_logprob=later.cumulative_logprob
        if later.cumulative_logprob is not None
        else earlier.cumulative_logprob,
    )


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
    # Tokens generated (cumulative; with speculative decoding a step may yield several per sequence).
    generation_tokens_total: int
    # Speculative decoding (cumulative): draft tokens proposed and verified, and those the model accepted.
    spec_draft_tokens_total: int = 0
    spec_accepted_tokens_total: int = 0
