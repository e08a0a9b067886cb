"""The frontend's door to Triton's speech-recognition model: audio in, recognized segments streamed back.

The model (model_repository/whisper) is decoupled: one gRPC response per recognized segment, the last one
flagged FINAL. Knows nothing of HTTP or OpenAI: failures surface as the TritonError family, with the
model's own refusals (undecodable audio, bad options) as TritonRequestError.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferResult
from tritonclient.utils import InferenceServerException

from frontend.triton_client import TritonError, TritonRequestError, TritonUnavailableError

# How the whisper model words a failure that is its own bug, not the request's fault.
_INTERNAL_FAILURE = "speech recognition failed"


@dataclass
class SpeechInput:
    """One recognition request as the speech model takes it."""

    # The uploaded file's bytes; the model decodes the container (wav, mp3, flac, ogg, webm, m4a).
    audio: bytes
    # "transcribe" keeps the spoken language; "translate" produces English.
    task: str
    # ISO-639-1 code of the spoken language, or None to detect it.
    language: str | None = None
    # Text conditioning the decoder (names, spelling, style), or None.
    prompt: str | None = None
    # None: the model's temperature fallback schedule; otherwise exactly this temperature.
    temperature: float | None = None
    # Word-level timings (an extra alignment pass in the model).
    word_timestamps: bool = False
    # Prefix of the Triton request id, for correlating logs.
    request_id: str = ""


@dataclass
class SpeechWord:
    """One word with its timing, as the model aligned it."""

    # The word with its leading space, as Whisper spells it.
    word: str
    # Seconds from the start of the audio.
    start: float
    end: float
    # Probability of the word's tokens.
    probability: float


@dataclass
class SpeechSegment:
    """One recognized segment, with Whisper's decoding statistics (OpenAI's verbose_json fields)."""

    id: int
    # Offset (in mel frames) of the 30 s window the segment was decoded from.
    seek: int
    # Seconds from the start of the audio.
    start: float
    end: float
    # Segment text; in space-delimited languages it starts with a space.
    text: str
    # Whisper token ids of the text.
    tokens: list[int]
    # Temperature that produced the segment (higher when the fallback schedule kicked in).
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    # Word timings; empty unless word timestamps were asked for.
    words: list[SpeechWord]


@dataclass
class SpeechChunk:
    """One response of the speech model."""

    # The recognized segment; None on the only response for audio without speech.
    segment: SpeechSegment | None
    # Language of the audio (ISO-639-1), given or detected.
    language: str
    # Confidence of the detection (1.0 when the language was given).
    language_probability: float
    # Seconds of audio.
    duration: float
    # Triton's final flag: nothing follows this response.
    final: bool


def _tensor(name: str, array: np.ndarray, triton_dtype: str) -> InferInput:
    tensor = InferInput(name, list(array.shape), triton_dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _text(name: str, value: bytes | str) -> InferInput:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return _tensor(name, np.array([data], dtype=np.object_), "BYTES")


def build_inputs(request: SpeechInput) -> list[InferInput]:
    """Only the options the request sets: an absent tensor means the model's default."""
    inputs = [_text("audio", request.audio), _text("task", request.task)]
    if request.language:
        inputs.append(_text("language", request.language))
    if request.prompt:
        inputs.append(_text("prompt", request.prompt))
    if request.temperature is not None:
        inputs.append(_tensor("temperature", np.array([request.temperature], dtype=np.float32), "FP32"))
    if request.word_timestamps:
        inputs.append(_tensor("word_timestamps", np.array([True], dtype=np.bool_), "BOOL"))
    return inputs


def _output(result: InferResult, name: str) -> Any:
    array = result.as_numpy(name)
    if array is None:
        raise TritonError(f"speech model response lacks output '{name}'")
    return array.reshape(-1)[0]


def parse_segment(payload: dict[str, Any]) -> SpeechSegment | None:
    """The model's segment JSON as a SpeechSegment; the empty object it sends for silence is None."""
    if not payload:
        return None
    words = [SpeechWord(**word) for word in payload.pop("words", [])]
    return SpeechSegment(**payload, words=words)


def parse_response(result: InferResult) -> SpeechChunk:
    parameters = result.get_response().parameters
    final = "triton_final_response" in parameters and parameters["triton_final_response"].bool_param
    return SpeechChunk(
        segment=parse_segment(json.loads(_output(result, "segment"))),
        language=_output(result, "language").decode("utf-8"),
        language_probability=float(_output(result, "language_probability")),
        duration=float(_output(result, "duration")),
        final=bool(final),
    )


def classify(message: str) -> TritonError:
    """A Triton failure message as the TritonError subclass that says whose fault it is."""
    lowered = message.lower()
    if "unknown model" in lowered or "is not ready" in lowered or "unavailable" in lowered:
        return TritonUnavailableError(message)
    if lowered.startswith(_INTERNAL_FAILURE):
        return TritonError(message)
    return TritonRequestError(message)


class SpeechClient:
    """An aio gRPC channel to one Triton server and the speech model to call on it."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.model = model
        # Created on first use, inside the running event loop the aio channel binds to.
        self._aio: triton_aio.InferenceServerClient | None = None

    @property
    def _client(self) -> triton_aio.InferenceServerClient:
        if self._aio is None:
            self._aio = triton_aio.InferenceServerClient(self.url)
        return self._aio

    async def recognize(self, request: SpeechInput) -> AsyncGenerator[SpeechChunk, None]:
        """Stream the model's responses until the final one.

        Closing the generator early cancels the gRPC call; the model checks for cancellation between
        segments and stops decoding.
        """

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": self.model,
                "inputs": build_inputs(request),
                "request_id": f"{request.request_id}-{uuid.uuid4().hex[:8]}",
            }

        try:
            stream = self._client.stream_infer(one_request())
        except InferenceServerException as error:
            raise TritonUnavailableError(str(error.message())) from None
        try:
            async for result, failure in stream:
                if failure is not None:
                    raise classify(str(failure.message()))
                chunk = parse_response(result)
                yield chunk
                if chunk.final:
                    return
            raise TritonError("the Triton stream ended before the final response")
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise TritonUnavailableError(f"Triton at {self.url} is unavailable") from None
            raise classify(str(error.details() if hasattr(error, "details") else error)) from None
        finally:
            stream.cancel()

    async def close(self) -> None:
        if self._aio is not None:
            await self._aio.close()
            self._aio = None
