"""The frontend's door to Triton's speech-recognition model: audio in, recognized segments streamed back.

The model (model_repository/whisper) is decoupled: one gRPC response per recognized segment, the last one
flagged FINAL. Knows nothing of HTTP or OpenAI: failures surface as the TritonError family, with the
model's own refusals (undecodable audio, bad options) as TritonRequestError.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import numpy as np
from tritonclient.grpc import InferInput, InferResult

from frontend.triton_stream import TritonError, TritonStreams, bytes_tensor, is_final, tensor


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


def build_inputs(request: SpeechInput) -> list[InferInput]:
    """Only the options the request sets: an absent tensor means the model's default."""
    inputs = [bytes_tensor("audio", request.audio), bytes_tensor("task", request.task)]
    if request.language:
        inputs.append(bytes_tensor("language", request.language))
    if request.prompt:
        inputs.append(bytes_tensor("prompt", request.prompt))
    if request.temperature is not None:
        inputs.append(tensor("temperature", np.array([request.temperature], dtype=np.float32), "FP32"))
    if request.word_timestamps:
        inputs.append(tensor("word_timestamps", np.array([True], dtype=np.bool_), "BOOL"))
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
    return SpeechChunk(
        segment=parse_segment(json.loads(_output(result, "segment"))),
        language=_output(result, "language").decode("utf-8"),
        language_probability=float(_output(result, "language_probability")),
        duration=float(_output(result, "duration")),
        final=is_final(result),
    )


class SpeechClient:
    """Streams to the speech model on one Triton server."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.model = model
        self._streams = TritonStreams(url)

    async def recognize(self, request: SpeechInput) -> AsyncGenerator[SpeechChunk, None]:
        """Stream the model's responses until the final one.

        Closing the generator early cancels the gRPC call; the model checks for cancellation between
        segments and stops decoding.
        """
        request_id = f"{request.request_id}-{uuid.uuid4().hex[:8]}"
        responses = self._streams.stream(self.model, build_inputs(request), request_id)
        try:
            async for result in responses:
                chunk = parse_response(result)
                yield chunk
                if chunk.final:
                    return
        finally:
            await responses.aclose()

    async def close(self) -> None:
        await self._streams.close()
