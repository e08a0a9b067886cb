"""/v1/audio/transcriptions and /v1/audio/translations: one speech-model request per upload, answered as
json, text, srt, vtt, verbose_json or a stream of `transcript.text.*` events.

The first Triton response is awaited before any HTTP status is chosen, so undecodable audio is a 400 even
for streams.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from pydantic import BaseModel

from frontend.errors import APIError, bad_request, model_not_found, unavailable
from frontend.protocol.audio import (
    AudioRequest,
    DurationUsage,
    TranscriptionResponse,
    TranscriptionSegment,
    TranscriptionVerboseResponse,
    TranscriptionWord,
    TranscriptTextDelta,
    TranscriptTextDone,
)
from frontend.serving.context import ServingContext
from frontend.serving.sse import DONE, error_frame, frame
from frontend.serving.subtitles import srt, vtt
from frontend.speech_client import (
    SpeechChunk,
    SpeechClient,
    SpeechInput,
    SpeechSegment,
)
from frontend.triton_stream import TritonError, TritonRequestError, TritonUnavailableError

ENDPOINTS = {"transcribe": "/v1/audio/transcriptions", "translate": "/v1/audio/translations"}


@dataclass
class TextAnswer:
    """A plain-text answer (response_format text, srt or vtt) with its media type."""

    text: str
    media_type: str


AudioAnswer = BaseModel | TextAnswer | AsyncIterator[str]


def speech_error(error: TritonError) -> APIError:
    """What a speech-model failure means to the client: its upload or options (400, 413), Triton's
    absence (503), or a bug (502)."""
    message = str(error)
    if isinstance(error, TritonUnavailableError):
        return unavailable(f"the speech model is unavailable: {message}")
    if isinstance(error, TritonRequestError):
        lowered = message.lower()
        if "bytes; the limit is" in lowered:
            return APIError(413, message, "invalid_request_error", "file", "request_too_large")
        if "audio" in lowered:
            return bad_request(message, param="file")
        if "language" in lowered:
            return bad_request(message, param="language")
        return bad_request(message)
    return APIError(502, f"the speech model failed: {message}", "server_error", None, "bad_gateway")


class Transcript:
    """The text so far, built from segment texts so that streamed deltas concatenate to the final text.

    Whisper starts segments of space-delimited languages with a space; the transcript's first one drops it.
    """

    def __init__(self) -> None:
        self.text = ""

    def add(self, segment: SpeechSegment) -> str:
        """Append a segment; returns the delta it added."""
        delta = segment.text if self.text else segment.text.lstrip()
        self.text += delta
        return delta


@dataclass
class Recognition:
    """A started speech-model request: its first response and the rest to come."""

    # The first response (already received).
    first: SpeechChunk
    # The remaining responses; closing it cancels the Triton request.
    rest: AsyncGenerator[SpeechChunk, None]
    # Endpoint label for metrics.
    endpoint: str
    # Monotonic arrival time of the HTTP request.
    arrival: float


class AudioHandler:
    """Both audio endpoints; owns the speech model's gRPC channel (closed with the app)."""

    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx
        config = ctx.config
        # None when the frontend serves no speech model: every audio request is then a 404.
        self.speech = (
            SpeechClient(config.triton_url, config.triton_speech_model)
            if config.triton_speech_model
            else None
        )

    def _client(self, model: str | None) -> SpeechClient:
        """The speech client for a request's `model` (None: the default); 404 for names it does not serve."""
        if self.speech is None:
            raise APIError(
                404,
                "This server has no speech model (it was started with --no-speech-model).",
                "invalid_request_error",
                "model",
                "model_not_found",
            )
        if model is not None and model not in self.ctx.config.speech_model_names:
            raise model_not_found(model)
        return self.speech

    async def create(self, request: AudioRequest, audio: bytes, task: str, request_id: str) -> AudioAnswer:
        client = self._client(request.model)
        recognition = await self._start(
            client,
            SpeechInput(
                audio=audio,
                task=task,
                language=request.language,
                prompt=request.prompt,
                temperature=request.sampling_temperature,
                word_timestamps=request.word_timestamps,
                request_id=request_id,
            ),
            ENDPOINTS[task],
        )
        if request.stream:
            return self._stream(recognition)
        try:
            chunks = [chunk async for chunk in self._chunks(recognition)]
        except TritonError as error:
            raise speech_error(error) from None
        return self._answer(request, task, chunks)

    async def _start(self, client: SpeechClient, request: SpeechInput, endpoint: str) -> Recognition:
        arrival = time.monotonic()
        stream = client.recognize(request)
        try:
            first = await anext(stream)
        except TritonError as error:
            await stream.aclose()
            raise speech_error(error) from None
        except BaseException:
            await stream.aclose()
            raise
        self.ctx.metrics.time_to_first_token.labels(endpoint).observe(time.monotonic() - arrival)
        return Recognition(first, stream, endpoint, arrival)

    async def _chunks(self, recognition: Recognition) -> AsyncGenerator[SpeechChunk, None]:
        """Every response, the first included; the Triton stream is closed at the end."""
        async with aclosing(recognition.rest) as rest:
            yield recognition.first
            if not recognition.first.final:
                async for chunk in rest:
                    yield chunk
        elapsed = time.monotonic() - recognition.arrival
        self.ctx.metrics.e2e_latency.labels(recognition.endpoint).observe(elapsed)

    async def _stream(self, recognition: Recognition) -> AsyncIterator[str]:
        transcript = Transcript()
        try:
            async with aclosing(self._chunks(recognition)) as chunks:
                async for chunk in chunks:
                    if chunk.segment is not None:
                        delta = transcript.add(chunk.segment)
                        if delta:
                            yield frame(TranscriptTextDelta(delta=delta))
            yield frame(TranscriptTextDone(text=transcript.text))
        except TritonError as error:
            yield error_frame(speech_error(error))
        yield DONE

    @staticmethod
    def _answer(request: AudioRequest, task: str, chunks: list[SpeechChunk]) -> BaseModel | TextAnswer:
        segments = [chunk.segment for chunk in chunks if chunk.segment is not None]
        transcript = Transcript()
        for segment in segments:
            transcript.add(segment)
        last = chunks[-1]
        usage = DurationUsage(seconds=math.ceil(last.duration))
        match request.response_format:
            case "json":
                return TranscriptionResponse(text=transcript.text, usage=usage)
            case "text":
                return TextAnswer(transcript.text, "text/plain; charset=utf-8")
            case "srt":
                return TextAnswer(srt(segments), "text/plain; charset=utf-8")
            case "vtt":
                return TextAnswer(vtt(segments), "text/vtt; charset=utf-8")
        return TranscriptionVerboseResponse(
            task=task,
            language="en" if task == "translate" else last.language,
            duration=last.duration,
            text=transcript.text,
            segments=[_segment(index, segment) for index, segment in enumerate(segments)]
            if request.segment_timestamps
            else None,
            words=[
                TranscriptionWord(word=word.word.strip(), start=word.start, end=word.end)
                for segment in segments
                for word in segment.words
            ]
            if request.word_timestamps
            else None,
            usage=usage,
        )

    async def close(self) -> None:
        if self.speech is not None:
            await self.speech.close()


def _segment(index: int, segment: SpeechSegment) -> TranscriptionSegment:
    # Numbered from 0 as OpenAI does (faster-whisper counts from 1).
    return TranscriptionSegment(
        id=index,
        seek=segment.seek,
        start=segment.start,
        end=segment.end,
        text=segment.text,
        tokens=segment.tokens,
        temperature=segment.temperature,
        avg_logprob=segment.avg_logprob,
        compression_ratio=segment.compression_ratio,
        no_speech_prob=segment.no_speech_prob,
    )
