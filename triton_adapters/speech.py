"""Pure helpers for the whisper model: request options, audio decoding, segment serialization."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
TASKS = ("transcribe", "translate")


class AudioError(ValueError):
    """Audio that cannot be used: undecodable, empty, too large or too long."""


@dataclass
class SpeechRequest:
    """One transcription/translation request as the whisper model receives it."""

    # Raw bytes of the uploaded file (any container PyAV can decode: wav, mp3, flac, ogg, webm, m4a).
    audio: bytes
    # "transcribe" keeps the spoken language; "translate" always produces English.
    task: str
    # ISO-639-1 code, or None to detect it.
    language: str | None
    # Text that conditions the decoder (names, spelling, style).
    prompt: str | None
    # None: faster-whisper's temperature fallback schedule (OpenAI's "0 or absent" behaviour, left to the
    # frontend to map); otherwise exactly this temperature, 0 meaning greedy without fallback.
    temperature: float | None
    # Word-level timings (costs an extra alignment pass).
    word_timestamps: bool


def _text(inputs: Mapping[str, np.ndarray], name: str) -> str | None:
    if name not in inputs:
        return None
    value = inputs[name].reshape(-1)[0]
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return text.strip() or None


def parse_speech_request(inputs: Mapping[str, np.ndarray], max_audio_bytes: int) -> SpeechRequest:
    if "audio" not in inputs:
        raise AudioError("input 'audio' is required")
    audio = inputs["audio"].reshape(-1)[0]
    if not isinstance(audio, bytes) or not audio:
        raise AudioError("the audio file is empty")
    if len(audio) > max_audio_bytes:
        raise AudioError(f"the audio file has {len(audio)} bytes; the limit is {max_audio_bytes}")
    task = _text(inputs, "task") or "transcribe"
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    temperature = float(inputs["temperature"].reshape(-1)[0]) if "temperature" in inputs else None
    if temperature is not None and not 0.0 <= temperature <= 1.0:
        raise ValueError(f"temperature must be between 0 and 1, got {temperature}")
    return SpeechRequest(
        audio=audio,
        task=task,
        language=_text(inputs, "language"),
        prompt=_text(inputs, "prompt"),
        temperature=temperature,
        word_timestamps=bool(inputs["word_timestamps"].reshape(-1)[0])
        if "word_timestamps" in inputs
        else False,
    )


def decode_audio(data: bytes, max_seconds: float) -> np.ndarray:
    """Mono float32 samples at 16 kHz, or AudioError with the decoder's reason."""
    from faster_whisper import decode_audio as whisper_decode

    try:
        samples = whisper_decode(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except Exception as error:  # PyAV raises many types (InvalidDataError, EOFError, ValueError...)
        raise AudioError(f"could not decode the audio file: {error}") from None
    if samples.size == 0:
        raise AudioError("the audio file contains no samples")
    duration = samples.size / SAMPLE_RATE
    if duration > max_seconds:
        raise AudioError(f"the audio lasts {duration:.1f} s; the limit is {max_seconds:.0f} s")
    return samples


def segment_json(segment: Any) -> str:
    """A faster-whisper Segment as the JSON the frontend turns into OpenAI's verbose_json."""
    words = [
        {
            "word": word.word,
            "start": round(word.start, 3),
            "end": round(word.end, 3),
            "probability": word.probability,
        }
        for word in (segment.words or [])
    ]
    return json.dumps(
        {
            "id": segment.id,
            "seek": segment.seek,
            "start": round(segment.start, 3),
            "end": round(segment.end, 3),
            "text": segment.text,
            "tokens": list(segment.tokens),
            "temperature": segment.temperature,
            "avg_logprob": segment.avg_logprob,
            "compression_ratio": segment.compression_ratio,
            "no_speech_prob": segment.no_speech_prob,
            "words": words,
        },
        ensure_ascii=False,
    )
