"""The frontend's only door to Triton: the decoupled engine model (`llm`) called over gRPC bi-directional
streaming.

The frontend tokenizes every prompt itself (it must template chat prompts anyway), so it calls the engine
model directly rather than the ensemble: the ensemble's preprocess step would have nothing left to do, and
its postprocess step only renames `text_delta` to `text_output`, yet every streamed token would cross two
more model hand-offs in tritonserver. Measured at 64 streams of 128 tokens: 218-238 tokens/s through the
ensemble against 273-274 straight to `llm` (tritonserver 0.39-0.45 -> 0.21 ms of CPU a token, the
postprocess process's 0.18 gone). The ensemble stays the door for Triton-native clients (perf_analyzer,
genai-perf), and speaks the same input names (`max_tokens`, `stream`, `sampling_parameters`, ...).

Knows nothing of HTTP or OpenAI: failures surface as the TritonError family and the serving layer decides
what they mean to a client.
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


@dataclass(kw_only=True)
class EngineRequest:
    """What every request to the engine model carries, a generation or an embedding (_request_inputs)."""

    # The prompt's token ids (chat prompts templated, then tokenized, as the endpoint decided).
    prompt_token_ids: list[int]
    # vLLM priority (lower is sooner).
    priority: int = 0
    # The client's prefix-cache isolation key, or None (_request_inputs adds the tenant's).
    cache_salt: str | None = None
    # The LoRA adapter (a name of the llm model's lora_modules) to serve it with; None: the base model.
    lora_name: str | None = None
    # The directory of an adapter loaded at run time (/v1/load_lora_adapter): the engine loads it from
    # there at the first request that brings it.
    lora_path: str | None = None
    # Triton request id, for correlating logs.
    request_id: str = ""


@dataclass(kw_only=True)
class GenerationInput(EngineRequest):
    """One generation request as the engine model takes it."""

    # True: one response per engine step with a text delta; False: one response with everything.
    stream: bool
    # Output token limit; None lets the engine fill the context.
    max_tokens: int | None = None
    # vLLM SamplingParams names -> values; the engine rejects by name what it does not support.
    sampling: dict[str, Any] = field(default_factory=dict)

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
    # The token's rank in the vocabulary (1: the most likely); sent for prompt tokens only.
    rank: int | None = None


@dataclass
class GenerationChunk:
    """One engine model response."""

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
    # With finish_reason "stop": the stop string or stop token id that ended the sequence (vLLM's
    # stop_reason); None for the tokenizer's EOS and every other end.
    stop_reason: int | str | None = None


@dataclass(kw_only=True)
class EmbeddingInput(EngineRequest):
    """One embedding request as the engine model takes it (its `pooling_parameters` input)."""

    # vLLM PoolingParams names -> values; empty: the engine's defaults.
    pooling: dict[str, Any] = field(default_factory=dict)


@dataclass
class Embedding:
    """The engine model's answer to an EmbeddingInput."""

    # float32 [hidden size, or the dimensions asked].
    vector: np.ndarray
    # Tokens the engine embedded (after truncate_prompt_tokens).
    num_input_tokens: int
    # Of those, tokens served from the prefix cache.
    num_cached_tokens: int


INT32_MAX = 2**31 - 1


def _request_inputs(request: EngineRequest) -> list[InferInput]:
    """The tensors of every engine model request: its prompt, priority, prefix-cache salt and adapter."""
    inputs = [
        tensor("input_ids", np.asarray(request.prompt_token_ids, dtype=np.int32), "INT32"),
        tensor("priority", np.array([request.priority], dtype=np.int32), "INT32"),
    ]
    # Every request passes here, so no endpoint can forget the tenant's share of the salt.
    salt = tenant_cache_salt(request.cache_salt)
    if salt:
        inputs.append(bytes_tensor("cache_salt", salt))
    if request.lora_name is not None:
        inputs.append(bytes_tensor("lora_name", request.lora_name))
    if request.lora_path is not None:
        inputs.append(bytes_tensor("lora_path", request.lora_path))
    return inputs


def build_inputs(request: GenerationInput) -> list[InferInput]:
    inputs = _request_inputs(request)
    inputs += [
        tensor("stream", np.array([request.stream], dtype=np.bool_), "BOOL"),
        # Each output costs every hop of every streamed token; parse_response carries the counts over.
        tensor("return_unchanged_outputs", np.array([False]), "BOOL"),
    ]
    if request.max_tokens is not None:
        # An upper limit: any value past INT32 is as far past every context length, where the engine refuses
        # it (a wrapped or overflowing conversion would not).
        max_tokens = min(request.max_tokens, INT32_MAX)
        inputs.append(tensor("max_tokens", np.array([max_tokens], dtype=np.int32), "INT32"))
    if request.sampling:
        inputs.append(bytes_tensor("sampling_parameters", json.dumps(request.sampling)))
    return inputs


def build_embedding_inputs(request: EmbeddingInput) -> list[InferInput]:
    inputs = _request_inputs(request)
    # Sent even when empty: its presence is what makes the request an embedding.
    inputs.append(bytes_tensor("pooling_parameters", json.dumps(request.pooling)))
    return inputs


def parse_embedding(result: InferResult) -> Embedding:
    """The one response of an embedding request; one without a vector (the engine aborted the request)
    is a TritonError."""
    outputs = output_arrays(result)
    vector = outputs.get("embedding")
    if vector is None:
        finish = outputs.get("finish_reason")
        reason = finish[0].decode("utf-8") if finish is not None else ""
        raise TritonError(f"the engine model answered an embedding request without one (finish_reason {reason!r})")
    return Embedding(
        vector=vector,
        num_input_tokens=int(_scalar(outputs, "num_input_tokens")),
        num_cached_tokens=int(_scalar(outputs, "num_cached_tokens")),
    )


def _scalar(outputs: dict[str, np.ndarray], name: str, earlier: Any = None) -> Any:
    array = outputs.get(name)
    if array is not None:
        return array[0]
    if earlier is None:
        raise TritonError(f"engine model response lacks output '{name}'")
    return earlier


def parse_response(
    result: InferResult,
    num_sequences: int = 1,
    previous: GenerationChunk | None = None,
    output_counts: dict[int, int] | None = None,
) -> GenerationChunk:
    """One engine model response; `final` is set from Triton's flag only when n == 1 (see generate).

    The logprob and sequence outputs are optional: absent when not asked (and sequence 0). Asked with
    `return_unchanged_outputs` false, a sequence's responses between its first and last leave out the
    request's token counts (taken from `previous`, the stream's latest response), an empty finish_reason
    and the sequence's output count: `output_counts` (sequence index -> output tokens so far, updated here)
    adds this response's tokens to it.
    """
    outputs = output_arrays(result)
    finish = outputs.get("finish_reason")
    finish_reason = finish[0].decode("utf-8") if finish is not None else ""
    token_ids_array = outputs.get("output_token_ids")
    token_ids = [] if token_ids_array is None else token_ids_array.tolist()
    index_array = outputs.get("sequence_index")
    index = 0 if index_array is None else int(index_array[0])
    counted = (
        None if output_counts is None or index not in output_counts else output_counts[index] + len(token_ids)
    )
    num_output_tokens = int(_scalar(outputs, "num_output_tokens", counted))
    if output_counts is not None:
        output_counts[index] = num_output_tokens
    cumulative = outputs.get("cum_log_probs")
    return GenerationChunk(
        text=_scalar(outputs, "text_delta").decode("utf-8"),
        token_ids=token_ids,
        num_input_tokens=int(
            _scalar(outputs, "num_input_tokens", None if previous is None else previous.num_input_tokens)
        ),
        num_output_tokens=num_output_tokens,
        num_cached_tokens=int(
            _scalar(outputs, "num_cached_tokens", None if previous is None else previous.num_cached_tokens)
        ),
        finish_reason=finish_reason or None,
        # aio clients cannot ask for empty final responses: the last real one also names its finish reason.
        final=bool(is_final(result) or (finish_reason and num_sequences == 1)),
        index=index,
        logprobs=_token_logprobs(outputs, token_ids),
        prompt_logprobs=_prompt_logprobs(outputs),
        cumulative_logprob=0.0 if cumulative is None else float(cumulative[0]),
        stop_reason=_json_tensor(outputs, "stop_reason"),
    )


def _json_tensor(outputs: dict[str, np.ndarray], name: str) -> Any:
    """A BYTES [1] JSON tensor's value; None when absent or empty (not asked)."""
    array = outputs.get(name)
    if array is None:
        return None
    raw = array[0]
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
        for token, value, pairs in zip(token_ids, values.tolist(), top, strict=True)
    ]


def _prompt_logprobs(outputs: dict[str, np.ndarray]) -> list[TokenLogprob | None] | None:
    entries = _json_tensor(outputs, "prompt_log_probs")
    if entries is None:
        return None
    return [
        None if entry is None else TokenLogprob(int(entry[0]), float(entry[1]), _pairs(entry[2]), int(entry[3]))
        for entry in entries
    ]


class TritonClient:
    """Streams to the engine model on one Triton server, and aborts through it."""

    def __init__(self, url: str, model: str = "llm", stall_probe_s: float = 5.0) -> None:
        self.url = url
        # The decoupled engine model: takes `input_ids` to generate and `abort_request_id` to abort.
        self.model = model
        # A stream silent this long has the engine probed (see TritonStreams.stream).
        self.stall_probe_s = stall_probe_s
        self._streams = TritonStreams(url)
        # Abort requests in flight (held so the event loop does not drop them half-way).
        self._aborts: set[asyncio.Task[bool]] = set()

    async def is_ready(self, timeout: float) -> bool:
        """The engine model is loaded and its process answers.

        Triton keeps reporting a model READY after its Python stub process died (2.51 restarts dead
        stubs only for non-decoupled models), so readiness alone would hide a dead engine: a no-op
        abort request travels through the stub and fails fast when it is gone.
        """
        try:
            if not await self._streams.client.is_model_ready(self.model, client_timeout=timeout):
                return False
        except (InferenceServerException, grpc.RpcError):
            return False
        try:
            return await asyncio.wait_for(self._abort("health-probe"), timeout)
        except TimeoutError:
            return False

    async def model_parameters(self, timeout: float) -> dict[str, str] | None:
        """The engine model's config.pbtxt `parameters` (name -> string value); None while Triton cannot
        say (not up yet, the model not loaded)."""
        try:
            answer = await self._streams.client.get_model_config(self.model, as_json=True, client_timeout=timeout)
        except (InferenceServerException, grpc.RpcError):
            return None
        parameters = answer.get("config", {}).get("parameters", {})
        return {name: value.get("string_value", "") for name, value in parameters.items()}

    async def generate(self, request: GenerationInput) -> AsyncGenerator[GenerationChunk, None]:
        """Stream the engine model's responses until the final one.

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
            is_dead=self._engine_is_gone,
        )
        finished = False
        previous: GenerationChunk | None = None
        output_counts: dict[int, int] = {}
        # With n > 1 every sequence's last response names a finish reason; the stream ends after all n.
        num_finished = 0
        try:
            async for result in responses:
                chunk = previous = parse_response(result, request.num_sequences, previous, output_counts)
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

    async def embed(self, request: EmbeddingInput) -> Embedding:
        """The engine model's one response to an embedding request. Cancelled before it comes (client gone,
        task cancelled), the gRPC call is cancelled and the request aborted in the engine."""
        triton_request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        responses = self._streams.stream(
            self.model,
            build_embedding_inputs(request),
            triton_request_id,
            stall_s=self.stall_probe_s,
            is_dead=self._engine_is_gone,
        )
        answered = False
        try:
            result = await anext(responses)
            answered = True
            return parse_embedding(result)
        except TritonError:
            # Triton ended the request itself: nothing is left to abort.
            answered = True
            raise
        finally:
            await responses.aclose()
            if not answered:
                self._abort_in_background(triton_request_id)

    async def _engine_is_gone(self) -> bool:
        try:
            return not await asyncio.wait_for(self._abort("stall-probe"), self.stall_probe_s)
        except TimeoutError:
            return False

    def _abort_in_background(self, triton_request_id: str) -> None:
        """Tell the engine to drop a request its client left.

        The cancelled gRPC call alone would do, later: the engine model notices it only on its next
        poll of `is_cancelled()`. Best effort: if this fails, that poll still catches it.
        """
        task = asyncio.get_running_loop().create_task(self._abort(triton_request_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _abort(self, triton_request_id: str) -> bool:
        """Ask the engine model to abort a request id; True when it answered without an error."""
        inputs = [bytes_tensor("abort_request_id", triton_request_id)]
        responses = self._streams.stream(self.model, inputs)
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
