"""The audio endpoints without Triton: form validation, model names, limits, flags and subtitle files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from frontend.app import build_app
from frontend.config import FrontendConfig, config_from_args
from frontend.metrics import FrontendMetrics
from frontend.serving.audio import Transcript
from frontend.serving.context import ServingContext, unix_now
from frontend.serving.subtitles import srt, timestamp, vtt
from frontend.speech_client import SpeechSegment, SpeechWord
from frontend.templating import ChatTemplater
from frontend.triton_client import TritonClient
from frontend.triton_stream import TritonError, TritonRequestError, TritonUnavailableError, classify
from tests.servers import free_port

LLM = "SmolLM2-135M-Instruct"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
WAV = ("speech.wav", b"RIFF not really a wav", "audio/wav")


@pytest.fixture(scope="module")
def templater(model_path: Path) -> ChatTemplater:
    return ChatTemplater(model_path)


def offline_app(model_path: Path, templater: ChatTemplater, **overrides: object) -> TestClient:
    """The app over a Triton nobody listens on, with a 4 KiB body limit."""
    settings: dict = {
        "model": model_path,
        "served_model_names": (LLM,),
        "triton_url": f"127.0.0.1:{free_port()}",
        "max_request_body_bytes": 4096,
        **overrides,
    }
    config = FrontendConfig(**settings)
    ctx = ServingContext(
        config=config,
        triton=TritonClient(config.triton_url, config.triton_model),
        templater=templater,
        metrics=FrontendMetrics(),
        started=unix_now(),
    )
    return TestClient(build_app(ctx))


@pytest.fixture(scope="module")
def client(model_path: Path, templater: ChatTemplater) -> Iterator[TestClient]:
    with offline_app(model_path, templater) as client:
        yield client


def assert_error(response, status: int, param: str | None = None, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return str(error["message"])


def test_speech_models_are_listed_and_retrievable(client: TestClient) -> None:
    ids = [card["id"] for card in client.get("/v1/models").json()["data"]]
    assert ids == [LLM, "whisper-base", "whisper-1"]
    card = client.get("/v1/models/whisper-1").json()
    assert card["id"] == "whisper-1" and card["root"] == "whisper"


def test_unknown_model_is_404_and_llm_names_are_not_speech_models(client: TestClient) -> None:
    for model in ("gpt-9", LLM):
        response = client.post(TRANSCRIPTIONS, files={"file": WAV}, data={"model": model})
        assert_error(response, 404, "model", "model_not_found")
    chat = {"model": "whisper-1", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(client.post("/v1/chat/completions", json=chat), 404, "model")


@pytest.mark.parametrize(
    ("data", "param", "fragment"),
    [
        ({"response_format": "mp3"}, "response_format", "json"),
        ({"temperature": "1.5"}, "temperature", "1"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"timestamp_granularities[]": "word"}, None, "verbose_json"),
        (
            {"timestamp_granularities[]": "sentence", "response_format": "verbose_json"},
            "timestamp_granularities.0",
            "word",
        ),
        ({"stream": "true", "response_format": "srt"}, None, "stream"),
        ({"include[]": "logprobs"}, "include", "unsupported"),
    ],
)
def test_bad_form_fields_are_400_naming_the_field(
    client: TestClient, data: dict, param: str | None, fragment: str
) -> None:
    response = client.post(TRANSCRIPTIONS, files={"file": WAV}, data={"model": "whisper-1", **data})
    assert fragment in assert_error(response, 400, param)


def test_missing_file_is_400(client: TestClient) -> None:
    for request in (
        {"data": {"model": "whisper-1"}},
        {"data": {"model": "whisper-1", "file": "text, not an upload"}},
        {"json": {"model": "whisper-1"}},
    ):
        assert_error(client.post(TRANSCRIPTIONS, **request), 400, "file")  # type: ignore[arg-type]


def test_too_large_upload_is_413(client: TestClient) -> None:
    big = ("long.wav", b"\0" * 8192, "audio/wav")
    response = client.post("/v1/audio/translations", files={"file": big}, data={"model": "whisper-1"})
    assert_error(response, 413, None, "request_too_large")


def test_unreachable_triton_is_503(client: TestClient) -> None:
    for data in ({"model": "whisper-1"}, {"model": "whisper-base", "stream": "true"}):
        assert_error(client.post(TRANSCRIPTIONS, files={"file": WAV}, data=data), 503)


def test_without_a_speech_model_audio_is_404(model_path: Path, templater: ChatTemplater) -> None:
    config = config_from_args(["--model", "m", "--no-speech-model"])
    assert config.triton_speech_model is None and config.speech_model_names == ()
    with offline_app(model_path, templater, triton_speech_model=None, speech_model_names=()) as client:
        assert [card["id"] for card in client.get("/v1/models").json()["data"]] == [LLM]
        for model in ({}, {"model": "whisper-1"}):
            assert_error(client.post(TRANSCRIPTIONS, files={"file": WAV}, data=model), 404, "model")


def test_speech_flags() -> None:
    default = config_from_args(["--model", "m"])
    assert default.triton_speech_model == "whisper"
    assert default.speech_model_names == ("whisper-base", "whisper-1")
    custom = config_from_args(
        ["--model", "m", "--triton-speech-model", "asr", "--speech-model-name", "whisper-1", "large-v3"]
    )
    assert custom.triton_speech_model == "asr" and custom.speech_model_names == ("whisper-1", "large-v3")


def test_triton_failures_are_classified() -> None:
    assert isinstance(classify("could not decode the audio file: EOF"), TritonRequestError)
    assert isinstance(classify("Request for unknown model: 'whisper' is not found"), TritonUnavailableError)
    failure = classify("speech recognition failed: RuntimeError: boom")
    assert type(failure) is TritonError


def segment(start: float, end: float, text: str) -> SpeechSegment:
    return SpeechSegment(
        id=0,
        seek=0,
        start=start,
        end=end,
        text=text,
        tokens=[],
        temperature=0.0,
        avg_logprob=-0.2,
        compression_ratio=1.1,
        no_speech_prob=0.01,
        words=[SpeechWord(word=" x", start=start, end=end, probability=0.9)],
    )


SEGMENTS = [segment(0.0, 2.5, " Hello there."), segment(2.5, 3661.0071, " How are you?")]


def test_timestamps() -> None:
    assert timestamp(0.0, ",") == "00:00:00,000"
    assert timestamp(3661.0071, ".") == "01:01:01.007"
    assert timestamp(100 * 3600 + 0.9996, ",") == "100:00:01,000"


def test_srt_and_vtt_files() -> None:
    assert srt(SEGMENTS) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n00:00:02,500 --> 01:01:01,007\nHow are you?\n"
    )
    assert vtt(SEGMENTS) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:02.500\nHello there.\n\n00:00:02.500 --> 01:01:01.007\nHow are you?\n"
    )
    assert srt([]) == "" and vtt([]) == "WEBVTT\n"


def test_transcript_deltas_concatenate_to_the_text() -> None:
    transcript = Transcript()
    deltas = [transcript.add(part) for part in (segment(0, 1, "  "), *SEGMENTS)]
    assert deltas == ["", "Hello there.", " How are you?"]
    assert transcript.text == "".join(deltas) == "Hello there. How are you?"
