"""The whisper model in a real tritonserver: speech synthesized by espeak-ng, streamed segments."""

from __future__ import annotations

import json
import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.servers import TritonServer

pytestmark = pytest.mark.slow


def recognize(url: str, audio: bytes, **options: Any) -> tuple[list[dict], str, Exception | None]:
    responses: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    inputs = [_tensor("audio", np.array([audio], dtype=np.object_))]
    for name, value in options.items():
        if isinstance(value, bool):
            array = np.array([value])
        elif isinstance(value, float):
            array = np.array([value], dtype=np.float32)
        else:
            array = np.array([value.encode()], dtype=np.object_)
        inputs.append(_tensor(name, array))
    segments: list[dict] = []
    language = ""
    try:
        client.async_stream_infer("whisper", inputs, enable_empty_final_response=True)
        while True:
            result, error = responses.get(timeout=120)
            if error is not None:
                return segments, language, error
            if result.as_numpy("segment") is not None:
                segment = json.loads(result.as_numpy("segment")[0])
                if segment:
                    segments.append(segment)
                language = result.as_numpy("language")[0].decode()
            if result.get_response().parameters["triton_final_response"].bool_param:
                return segments, language, None
    finally:
        client.stop_stream()


def _tensor(name: str, array: np.ndarray) -> grpcclient.InferInput:
    dtype = {np.dtype(np.bool_): "BOOL", np.dtype(np.float32): "FP32"}.get(array.dtype, "BYTES")
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def words_of(segments: list[dict]) -> str:
    return " ".join(segment["text"] for segment in segments).lower()


def test_english_transcription_with_word_timestamps(
    triton_server: TritonServer, speech: dict[str, bytes]
) -> None:
    segments, language, error = recognize(triton_server.grpc_url, speech["en"], word_timestamps=True)
    assert error is None, error
    assert language == "en"
    text = words_of(segments)
    for keyword in ("fox", "dog", "paris", "france"):
        assert keyword in text, text
    starts = [word["start"] for segment in segments for word in segment["words"]]
    assert starts and starts == sorted(starts)
    assert all(segment["end"] >= segment["start"] for segment in segments)


def test_flac_decodes_too(triton_server: TritonServer, speech: dict[str, bytes]) -> None:
    segments, _, error = recognize(triton_server.grpc_url, speech["en_flac"])
    assert error is None and "fox" in words_of(segments)


def test_german_is_detected_and_translated(triton_server: TritonServer, speech: dict[str, bytes]) -> None:
    # Synthetic speech falls through the whole temperature-fallback schedule, which ends in random
    # sampling at temperature 1.0; an explicit 0 decodes greedily and makes the outcome reproducible.
    segments, language, error = recognize(triton_server.grpc_url, speech["de"], temperature=0.0)
    assert error is None and language == "de"
    assert "morgen" in words_of(segments)
    translated, _, error = recognize(triton_server.grpc_url, speech["de"], task="translate", temperature=0.0)
    assert error is None and "morning" in words_of(translated)


def test_garbage_bytes_fail_cleanly_and_the_model_keeps_serving(
    triton_server: TritonServer, speech: dict[str, bytes]
) -> None:
    _, _, error = recognize(triton_server.grpc_url, b"\x00\x01 definitely not audio")
    assert error is not None and "could not decode" in str(error)
    segments, _, error = recognize(triton_server.grpc_url, speech["en"])
    assert error is None and segments
