"""/v1/audio/transcriptions and /v1/audio/translations: the multipart form fields and OpenAI's answers.

The form arrives as strings (`temperature=0.2`, `stream=true`, repeated `timestamp_granularities[]`);
`AudioRequest` validates them in pydantic's lax mode, so wrong values get the usual 400 naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
# Form fields that are lists (sent as repeated `name[]` parts).
LIST_FIELDS = frozenset({"timestamp_granularities"})
# Formats a stream can carry: text deltas have no timestamps to put into subtitles or segments.
STREAMABLE_FORMATS = ("json", "text")


class AudioRequest(BaseModel):
    """The form fields besides `file`; unknown fields are refused by name, not ignored."""

    model_config = ConfigDict(extra="forbid")

    # Speech model id; None picks the default speech model.
    model: str | None = None
    # ISO-639-1 code of the spoken language; None detects it.
    language: str | None = None
    # Text that guides style and spelling (or continues a previous segment).
    prompt: str | None = None
    response_format: ResponseFormat = "json"
    # 0 or absent: Whisper's fallback schedule (0, 0.2, ... 1.0 while decoding fails), as OpenAI does;
    # any other value: decode at exactly that temperature.
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    # "segment" and/or "word" timings in verbose_json.
    timestamp_granularities: list[Literal["word", "segment"]] = Field(default_factory=list)
    # Server-sent `transcript.text.delta` events, one per recognized segment.
    stream: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> AudioRequest:
        if self.timestamp_granularities and self.response_format != "verbose_json":
            raise ValueError("timestamp_granularities requires response_format 'verbose_json'")
        if self.stream and self.response_format not in STREAMABLE_FORMATS:
            raise ValueError(f"stream=true supports response_format {' or '.join(STREAMABLE_FORMATS)}")
        return self

    @property
    def word_timestamps(self) -> bool:
        return "word" in self.timestamp_granularities

    @property
    def segment_timestamps(self) -> bool:
        """OpenAI's default granularity is the segment: only an explicit word-only request drops them."""
        return not self.timestamp_granularities or "segment" in self.timestamp_granularities

    @property
    def sampling_temperature(self) -> float | None:
        """What the speech model gets: None (its fallback schedule) for OpenAI's 0 or absent."""
        return self.temperature or None


class DurationUsage(BaseModel):
    """Usage of models billed by audio duration, as OpenAI reports it for whisper-1."""

    type: Literal["duration"] = "duration"
    # Seconds of audio, rounded up.
    seconds: int


class TranscriptionWord(BaseModel):
    word: str
    start: float
    end: float


class TranscriptionSegment(BaseModel):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionResponse(BaseModel):
    """response_format json (transcriptions and translations alike)."""

    text: str
    usage: DurationUsage | None = None


class TranscriptionVerboseResponse(BaseModel):
    """response_format verbose_json."""

    # "transcribe" or "translate".
    task: str
    # ISO-639-1 code: the detected (or given) spoken language; "en" for translations, their output.
    language: str
    # Seconds of audio.
    duration: float
    text: str
    segments: list[TranscriptionSegment] | None = None
    words: list[TranscriptionWord] | None = None
    usage: DurationUsage | None = None


class TranscriptTextDelta(BaseModel):
    """Stream event: more text was recognized."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str


class TranscriptTextDone(BaseModel):
    """Last stream event: the whole text, equal to the concatenated deltas."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str
