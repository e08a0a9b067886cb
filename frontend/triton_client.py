"""The frontend's only door to Triton: one decoupled ensemble called over gRPC bi-directional streaming.

Speaks the TensorRT-LLM tensor names (`text_input`, `max_tokens`, `stream`, ...) with sampling settings
as one vllm_backend-style `sampling_parameters` JSON object. Knows nothing of HTTP or OpenAI: failures
surface as the TritonError family and the serving layer decides what they mean to a client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput, InferResult
from tritonclient.utils import InferenceServerException

from frontend.tenancy import tenant_cache_salt
from frontend.triton_stream import (
    TritonError,
    TritonStreams,
    bytes_tensor,
    is_final,
    output_arrays,
    tensor,
)


@dataclass
class GenerationInput:
    """One generation request as the ensemble takes it."""

    # Prompt text (already chat-templated for chat requests).
    prompt: str
    # True: one response per engine step with a text delta; False: one response with everything.
    stream: bool
    # False for chat-templated prompts: the template already placed BOS and friends.
    add_special_tokens: bool = True
    # The prompt's token ids when the frontend tokenized it (chat); Triton then ignores `prompt`.
    prompt_token_ids: list[int] | None = None
    # Output token limit; None lets the engine fill the context.
    max_tokens: int | None = None
    # vLLM SamplingParams names -> values; the engine rejects by name what it does not support.
    sampling: dict[str, Any] = field(default_factory=dict)
    # vLLM priority (lower is sooner).
    priority: int = 0
    # The client's prefix-cache isolation key, or None (build_inputs adds the tenant's).
    cache_salt: str | None = None
    # Triton request id, for correlating logs.
    request_id: str = ""

    @property
    def num_sequences(self) -> int:
        """Sequences the stream carries (n); it ends once each has finished."""
        return int(self.sampling.get("n", 1))


@dataclass
class TokenLogprob:
    """A token's raw logprob (the model's distribution before sampling settings) and the top ones there."""

    token_id: int
    logprob: float
    # (token id, logprob), most likely first; as many as asked.
    top: list[tuple[int, float]]


@dataclass
class GenerationChunk:
    """One ensemble response."""

    # Text delta (the whole text when not streaming); deltas concatenate exactly to the full text.
    text: str
    # Token ids of this delta.
    token_ids: list[int]
    num_input_tokens: int
    # Cumulative output tokens so far.
    num_output_tokens: int
    # Prompt tokens served from the prefix cache.
    num_cached_tokens: int
    # "stop" | "length" | "abort" on the final response, else None.
    finish_reason: str | None
    # Nothing follows this response (Triton's final flag, or every sequence has finished).
    final: bool
    # Which of the request's n sequences this response belongs to.
    index: int = 0
    # One per token in token_ids when logprobs were asked, else None.
    logprobs: list[TokenLogprob] | None = None
    # On a sequence's first response when prompt logprobs were asked: one per prompt token, None first.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # The sequence's cumulative logprob so far (0 when not computed).
    cumulative_logprob: float = 0.0


def build_inputs(request: GenerationInput) -> list[InferInput]:
    inputs = [
        # Required by the ensemble, read only without token ids: no need to ship the prompt twice.
        bytes_tensor("text_input", "" if request.prompt_token_ids is not None else request.prompt),
        tensor("stream", np.array([request.stream], dtype=np.bool_), "BOOL"),
        tensor("add_special_tokens", np.array([request.add_special_tokens], dtype=np.bool_), "BOOL"),
        tensor("priority", np.array([request.priority], dtype=np.int32), "INT32"),
    ]
    if request.prompt_token_ids is not None:
        ids = np.asarray(request.prompt_token_ids, dtype=np.int32)
        inputs.append(tensor("prompt_token_ids", ids, "INT32"))
    if request.max_tokens is not None:
        inputs.append(tensor("max_tokens", np.array([request.max_tokens], dtype=np.int32), "INT32"))
    if request.sampling:
        inputs.append(bytes_tensor("sampling_parameters", json.dumps(request.sampling)))
    # Every generation passes here, so no endpoint can forget the tenant's share of the salt.
    cache_salt = tenant_cache_salt(request.cache_salt)
    if cache_salt:
        inputs.append(bytes_tensor("cache_salt", cache_salt))
    return inputs


def _scalar(outputs: dict[str, np.ndarray], name: str) -> Any:
    array = outputs.get(name)
    if array is None:
        raise TritonError(f"ensemble response lacks output '{name}'")
    return array.reshape(-1)[0]


def parse_response(result: InferResult, num_sequences: int = 1) -> GenerationChunk:
    """One ensemble response; `final` is set from Triton's flag only when n == 1 (see generate).
    The logprob and sequence outputs are optional: absent when not asked (and sequence 0)."""
    outputs = output_arrays(result)
    finish = _scalar(outputs, "finish_reason")
    finish_reason = finish.decode("utf-8") if isinstance(finish, bytes) else str(finish)
    final_flag = is_final(result)
    token_ids_array = outputs.get("output_token_ids")
    token_ids = [] if token_ids_array is None else token_ids_array.reshape(-1).tolist()
    index = outputs.get("sequence_index")
    cumulative = outputs.get("cum_log_probs")
    return GenerationChunk(
        text=_scalar(outputs, "text_output").decode("utf-8"),
        token_ids=token_ids,
        num_input_tokens=int(_scalar(outputs, "num_input_tokens")),
        num_output_tokens=int(_scalar(outputs, "num_output_tokens")),
        num_cached_tokens=int(_scalar(outputs, "num_cached_tokens")),
        finish_reason=finish_reason or None,
        # aio clients cannot ask for empty final responses: the last real one also names its finish reason.
        final=bool(final_flag or (finish_reason and num_sequences == 1)),
        index=0 if index is None else int(index.reshape(-1)[0]),
        logprobs=_token_logprobs(outputs, token_ids),
        prompt_logprobs=_prompt_logprobs(outputs),
        cumulative_logprob=0.0 if cumulative is None else float(cumulative.reshape(-1)[0]),
    )


def _json_tensor(outputs: dict[str, np.ndarray], name: str) -> Any:
    """A BYTES [1] JSON tensor's value; None when absent or empty (not asked)."""
    array = outputs.get(name)
    if array is None:
        return None
    raw = array.reshape(-1)[0]
    text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
    return json.loads(text) if text else None


def _pairs(top: list[list[float]]) -> list[tuple[int, float]]:
    return [(int(token), float(logprob)) for token, logprob in top]


def _token_logprobs(outputs: dict[str, np.ndarray], token_ids: list[int]) -> list[TokenLogprob] | None:
    """`top_log_probs` (JSON, one list per token) with `output_log_probs` (one float per token)."""
    top = _json_tensor(outputs, "top_log_probs")
    values = outputs.get("output_log_probs")
    if top is None or values is None:
        return None
    return [
        TokenLogprob(token, float(value), _pairs(pairs))
        for token, value, pairs in zip(token_ids, values.reshape(-1).tolist(), top, strict=True)
    ]


def _prompt_logprobs(outputs: dict[str, np.ndarray]) -> list[TokenLogprob | None] | None:
    entries = _json_tensor(outputs, "prompt_log_probs")
    if entries is None:
        return None
    return [
        None if entry is None else TokenLogprob(int(entry[0]), float(entry[1]), _pairs(entry[2]))
        for entry in entries
    ]


class TritonClient:
    """Streams to the ensemble on one Triton server, and aborts through the engine model."""

    def __init__(
        self, url: str, model: str, abort_model: str | None = "llm", stall_probe_s: float = 5.0
    ) -> None:
        self.url = url
        self.model = model
        # The decoupled engine model that takes `abort_request_id`; None when the ensemble has none.
        self.abort_model = abort_model
        # A stream silent this long has the engine probed (see TritonStreams.stream).
        self.stall_probe_s = stall_probe_s
        self._streams = TritonStreams(url)
        # Abort requests in flight (held so the event loop does not drop them half-way).
        self._aborts: set[asyncio.Task[bool]] = set()

    async def is_ready(self, timeout: float) -> bool:
        """The ensemble is loaded and the engine's process answers.

        Triton keeps reporting a model READY after its Python stub process died (2.51 restarts dead
        stubs only for non-decoupled models), so readiness alone would hide a dead engine: a no-op
        abort request travels through the stub and fails fast when it is gone.
        """
        try:
            if not await self._streams.client.is_model_ready(self.model, client_timeout=timeout):
                return False
        except (InferenceServerException, grpc.RpcError):
            return False
        if self.abort_model is None:
            return True
        try:
            return await asyncio.wait_for(self._abort("health-probe"), timeout)
        except TimeoutError:
            return False

    async def generate(self, request: GenerationInput) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the ensemble's responses until the final one.

        Closing the generator early (client gone, task cancelled) cancels the gRPC call and aborts the
        request in the engine, so the engine frees the sequence.
        """
        # Unique even when clients reuse x-request-id, so an abort names exactly this request.
        triton_request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        responses = self._streams.stream(
            self.model,
            build_inputs(request),
            triton_request_id,
            stall_s=self.stall_probe_s,
            is_dead=self._engine_is_gone if self.abort_model else None,
        )
        finished = False
        # With n > 1 every sequence's last response names a finish reason; the stream ends after all n.
        num_finished = 0
        try:
            async for result in responses:
                chunk = parse_response(result, request.num_sequences)
                num_finished += chunk.finish_reason is not None
                chunk.final = chunk.final or num_finished >= request.num_sequences
                finished = chunk.final
                yield chunk
                if chunk.final:
                    return
        except TritonError:
            # Triton ended the request itself: nothing is left to abort.
            finished = True
            raise
        finally:
            await responses.aclose()
            if not finished:
                self._abort_in_background(triton_request_id)

    async def _engine_is_gone(self) -> bool:
        try:
            return not await asyncio.wait_for(self._abort("stall-probe"), self.stall_probe_s)
        except TimeoutError:
            return False

    def _abort_in_background(self, triton_request_id: str) -> None:
        """Tell the engine to drop a request its client left.

        Cancelling the gRPC call alone is not enough: Triton 2.51 does not pass an ensemble's
        cancellation into the step that is already running, so the engine would generate on until
        max_tokens. Best effort: if this fails, postprocess's relay still catches the next step.
        """
        if self.abort_model is None:
            return
        task = asyncio.get_running_loop().create_task(self._abort(triton_request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _abort(self, triton_request_id: str) -> bool:
        """Ask the engine model to abort a request id; True when it answered without an error."""
        assert self.abort_model is not None
        inputs = [bytes_tensor("abort_request_id", triton_request_id)]
        responses = self._streams.stream(self.abort_model, inputs)
        try:
            async for _result in responses:
                return True
        except TritonError:
            pass
        finally:
            await responses.aclose()
        return False

    async def close(self) -> None:
        await self._streams.close()
