"""One request over Triton's gRPC bi-directional stream, with Triton's failures mapped to whose fault they are.

Shared by the language-model client (triton_client) and the speech client (speech_client): both send one
request to a decoupled model and read its responses until they see the final one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferResult
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor, triton_to_np_dtype


class TritonError(Exception):
    """Triton failed in a way that is neither the client's fault nor a connectivity problem."""


class TritonRequestError(TritonError):
    """Triton (or the model behind it) refused the request; the message says why."""


class TritonUnavailableError(TritonError):
    """Triton cannot be reached, or the model is not loaded or its process is gone."""


class TritonOverloadedError(TritonError):
    """The engine's waiting queue is full; the same request may succeed a moment later."""


def tensor(name: str, array: np.ndarray, triton_dtype: str) -> InferInput:
    infer_input = InferInput(name, list(array.shape), triton_dtype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def bytes_tensor(name: str, value: bytes | str) -> InferInput:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return tensor(name, np.array([data], dtype=np.object_), "BYTES")


def output_arrays(result: InferResult) -> dict[str, np.ndarray]:
    """Every output of a response by name, flattened, decoded in one pass: InferResult.as_numpy scans all
    the outputs for each name asked, and a streamed token's response is read for several of them. Shapes
    are not read (each costs a protobuf container walk): every output here is read as a flat list."""
    response = result.get_response()
    raw = response.raw_output_contents
    arrays = {}
    for index, output in enumerate(response.outputs):
        name = output.name
        if index >= len(raw):  # contents sent as typed fields, not raw bytes (Triton itself never does)
            arrays[name] = result.as_numpy(name).reshape(-1)
            continue
        content = raw[index]
        datatype = output.datatype
        if datatype != "BYTES":
            arrays[name] = np.frombuffer(content, dtype=triton_to_np_dtype(datatype))
        elif int.from_bytes(content[:4], "little") == len(content) - 4:
            # One element (nearly every BYTES output): its 4-byte length, then its bytes.
            arrays[name] = np.array([content[4:]], dtype=np.object_)
        else:
            arrays[name] = deserialize_bytes_tensor(content)
    return arrays


def is_final(result: InferResult) -> bool:
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


# How the speech and llm models word a failure that is their own bug, not the request's fault (the llm
# model's "engine error: ..." ends every request of a failed step, or all of them when its loop stopped).
_MODEL_FAILURE_PREFIXES = ("speech recognition failed", "engine error")
# "Stub process ... is not healthy": the model's Python process died and Triton will not restart it.
_UNAVAILABLE_MARKERS = ("unknown model", "is not ready", "unavailable", "is not healthy")


def classify(message: str) -> TritonError:
    """A Triton failure message as the TritonError subclass that says whose fault it is."""
    lowered = message.lower()
    if "queue is full" in lowered:
        return TritonOverloadedError(message)
    if any(marker in lowered for marker in _UNAVAILABLE_MARKERS):
        return TritonUnavailableError(message)
    if lowered.startswith(_MODEL_FAILURE_PREFIXES):
        return TritonError(message)
    return TritonRequestError(message)


class TritonStreams:
    """A shared aio gRPC channel to one Triton server, created on first use inside the running loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._aio: triton_aio.InferenceServerClient | None = None

    @property
    def client(self) -> triton_aio.InferenceServerClient:
        if self._aio is None:
            self._aio = triton_aio.InferenceServerClient(self.url)
        return self._aio

    async def stream(
        self,
        model: str,
        inputs: list[InferInput],
        request_id: str = "",
        stall_s: float | None = None,
        is_dead: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncGenerator[InferResult, None]:
        """The responses of one request, failures raised as TritonErrors; the caller stops at the final one.

        Closing the generator early cancels the gRPC call. With `is_dead`, a stream silent for `stall_s`
        seconds asks it whether the model is gone: Triton 2.51 neither restarts a dead decoupled stub nor
        fails its requests in flight, whose streams just go quiet. A live model that is merely slow (a long
        prefill) is waited for.
        """

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs, "request_id": request_id}

        try:
            responses = self.client.stream_infer(one_request())
        except InferenceServerException as error:
            raise TritonUnavailableError(str(error.message())) from None
        watch = None if is_dead is None else _StallWatch(stall_s or 0.0, is_dead, responses.cancel)
        try:
            async for result, failure in responses:
                if watch is not None:
                    watch.last_seen = time.monotonic()
                if failure is not None:
                    raise classify(str(failure.message()))
                yield result
            raise TritonError("the Triton stream ended before the final response")
        except asyncio.CancelledError:
            # The watch cancelled the call (its pending read ends so), not the task reading it.
            if watch is not None and watch.found_dead:
                raise TritonUnavailableError(
                    f"model '{model}' stopped answering: its process is not healthy"
                ) from None
            raise
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise TritonUnavailableError(f"Triton at {self.url} is unavailable") from None
            raise classify(str(error.details() if hasattr(error, "details") else error)) from None
        finally:
            if watch is not None:
                watch.stop()
            responses.cancel()

    async def close(self) -> None:
        if self._aio is not None:
            await self._aio.close()
            self._aio = None


class _StallWatch:
    """Beside a stream: once it has been silent for `stall_s`, asks `is_dead`, and cancels the call if so.

    A timeout on each read would not do: cancelling a pending read cancels the gRPC call itself, and a
    task plus a wait for every streamed token cost more than parsing the token.
    """

    def __init__(
        self, stall_s: float, is_dead: Callable[[], Awaitable[bool]], cancel: Callable[[], Any]
    ) -> None:
        # Monotonic time of the latest response (or of the start, or of the latest probe that found life).
        self.last_seen = time.monotonic()
        self.found_dead = False
        self._task = asyncio.get_running_loop().create_task(self._watch(stall_s, is_dead, cancel))

    async def _watch(
        self, stall_s: float, is_dead: Callable[[], Awaitable[bool]], cancel: Callable[[], Any]
    ) -> None:
        while True:
            await asyncio.sleep(max(0.0, self.last_seen + stall_s - time.monotonic()))
            if time.monotonic() - self.last_seen < stall_s:
                continue
            if await is_dead():
                self.found_dead = True
                cancel()
                return
            self.last_seen = time.monotonic()

    def stop(self) -> None:
        self._task.cancel()
