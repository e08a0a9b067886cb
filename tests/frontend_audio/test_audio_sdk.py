"""/v1/audio/* against a real tritonserver (whisper-base) through the official OpenAI SDK."""

from __future__ import annotations

import re

import openai
import pytest

from tests.servers import FrontendServer

pytestmark = pytest.mark.slow

# espeak's robotic German makes whisper-base fall through its whole temperature-fallback schedule, which
# ends in random sampling at 1.0. OpenAI's temperature 0 (or none) means exactly that schedule, so German
# requests send a small explicit temperature instead: the model then decodes at that temperature alone,
# which is greedy in effect and gives the same words every run.
GERMAN_TEMPERATURE = 0.01
SRT_CUE = re.compile(r"(\d+)\n(\d\d:\d\d:\d\d,\d{3}) --> (\d\d:\d\d:\d\d,\d{3})\n(.+)")
VTT_CUE = re.compile(r"(\d\d:\d\d:\d\d\.\d{3}) --> (\d\d:\d\d:\d\d\.\d{3})\n(.+)")


@pytest.fixture(scope="module")
def client(frontend_server: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)


def assert_english(text: str) -> None:
    for keyword in ("fox", "dog", "paris", "france"):
        assert keyword in text.lower(), text


def test_json(client: openai.OpenAI, speech: dict[str, bytes]) -> None:
    reply = client.audio.transcriptions.create(model="whisper-1", file=("en.wav", speech["en"]))
    assert_english(reply.text)
    assert reply.usage is not None and reply.usage.type == "duration" and reply.usage.seconds > 0


def test_srt_and_vtt_are_subtitle_files(client: openai.OpenAI, speech: dict[str, bytes]) -> None:
    subtitles = client.audio.transcriptions.create(
        model="whisper-1", file=("en.wav", speech["en"]), response_format="srt"
    )
    cues = [SRT_CUE.fullmatch(block) for block in subtitles.strip().split("\n\n")]
    assert cues and all(cues), subtitles
    assert [int(cue[1]) for cue in cues if cue] == list(range(1, len(cues) + 1))
    assert all(cue[2] <= cue[3] for cue in cues if cue)
    assert_english(" ".join(cue[4] for cue in cues if cue))
    web = client.audio.transcriptions.create(
        model="whisper-1", file=("en.wav", speech["en"]), response_format="vtt"
    )
    header, *blocks = web.strip().split("\n\n")
    assert header == "WEBVTT" and blocks, web
    assert all(VTT_CUE.fullmatch(block) for block in blocks), web


def test_verbose_json_has_segments_and_words_in_order(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    reply = client.audio.transcriptions.create(
        model="whisper-1",
        file=("en.wav", speech["en"]),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert reply.language == "en" and reply.duration > 3
    assert_english(reply.text)
    assert reply.segments and reply.words
    assert "".join(segment.text for segment in reply.segments).strip() == reply.text
    assert [segment.id for segment in reply.segments] == list(range(len(reply.segments)))
    assert all(0 <= segment.start <= segment.end <= reply.duration + 0.5 for segment in reply.segments)
    starts = [word.start for word in reply.words]
    assert starts == sorted(starts) and all(word.start <= word.end for word in reply.words)
    assert "fox" in [word.word.strip(".,").lower() for word in reply.words]


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations deprecated
def test_german_is_detected_and_translated_to_english(
    client: openai.OpenAI, speech: dict[str, bytes]
) -> None:
    reply = client.audio.transcriptions.create(
        model="whisper-1",
        file=("de.wav", speech["de"]),
        response_format="verbose_json",
        temperature=GERMAN_TEMPERATURE,
    )
    assert reply.language == "de" and "morgen" in reply.text.lower(), reply.text
    assert reply.segments and all(segment.temperature == pytest.approx(0.01) for segment in reply.segments)
    assert reply.words is None
    translated = client.audio.translations.create(
        model="whisper-1", file=("de.wav", speech["de"]), temperature=GERMAN_TEMPERATURE
    )
    assert "morning" in translated.text.lower(), translated.text


def test_stream_deltas_concatenate_to_the_final_text(client: openai.OpenAI, speech: dict[str, bytes]) -> None:
    events = list(
        client.audio.transcriptions.create(model="whisper-1", file=("en.wav", speech["en"]), stream=True)
    )
    *deltas, done = events
    assert deltas and all(event.type == "transcript.text.delta" for event in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(event.delta for event in deltas) == done.text
    assert_english(done.text)


def test_garbage_is_400_and_serving_goes_on_in_text(client: openai.OpenAI, speech: dict[str, bytes]) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.transcriptions.create(
                model="whisper-1", file=("noise.wav", b"\x00\x01 definitely not audio"), stream=stream
            )
        assert caught.value.body["param"] == "file" and "decode" in caught.value.message  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="gpt-9", file=("en.wav", speech["en"]))
    text = client.audio.transcriptions.create(
        model="whisper-base", file=("en.wav", speech["en"]), response_format="text"
    )
    assert isinstance(text, str) and not text.startswith((" ", "{")) and "\n" not in text
    assert_english(text)


def test_speech_models_are_listed(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert "whisper-1" in ids and "whisper-base" in ids
    assert client.models.retrieve("whisper-1").id == "whisper-1"
