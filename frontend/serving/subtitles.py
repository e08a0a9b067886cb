"""Recognized segments as subtitle files: SubRip (srt) and WebVTT (vtt), as OpenAI writes them."""

from __future__ import annotations

from collections.abc import Sequence

from frontend.speech_client import SpeechSegment


def timestamp(seconds: float, decimal_marker: str) -> str:
    """`HH:MM:SS,mmm` (srt) or `HH:MM:SS.mmm` (vtt); hours never roll over into days."""
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole_seconds, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole_seconds:02d}{decimal_marker}{milliseconds:03d}"


def srt(segments: Sequence[SpeechSegment]) -> str:
    """Numbered cues from 1, each `start --> end` then its text, separated by blank lines."""
    cues = [
        f"{index}\n{timestamp(segment.start, ',')} --> {timestamp(segment.end, ',')}\n{segment.text.strip()}\n"
        for index, segment in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def vtt(segments: Sequence[SpeechSegment]) -> str:
    """The `WEBVTT` header, then one unnumbered cue per segment."""
    cues = [
        f"{timestamp(segment.start, '.')} --> {timestamp(segment.end, '.')}\n{segment.text.strip()}\n"
        for segment in segments
    ]
    return "\n".join(["WEBVTT\n", *cues])
