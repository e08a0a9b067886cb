"""/v1/embeddings without Triton: the request model, the vector encodings, and the refusals made before Triton
is asked (the served path is tests/integration/test_embeddings_served.py)."""

from __future__ import annotations

import base64
import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from frontend.app import build_app
from frontend.metrics import FrontendMetrics
from frontend.protocol.embeddings import MAX_INPUTS, EmbeddingRequest
from frontend.serving.context import ServingContext
from frontend.serving.embeddings import encoded
from frontend.triton_client import TritonClient
from tests.frontend.conftest import API_KEY, MODEL_NAME
from tests.frontend.test_app import assert_error


@pytest.mark.parametrize("value", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_the_four_input_forms(value: object) -> None:
    request = EmbeddingRequest.model_validate({"model": "m", "input": value})
    assert request.input == value and request.encoding_format == "float" and request.add_special_tokens


@pytest.mark.parametrize(
    "fields",
    [
        {"input": ""},
        {"input": []},
        {"input": ["a", ""]},
        {"input": [[1], []]},
        {"input": ["a", 1]},
        {"input": ["a"] * (MAX_INPUTS + 1)},
        {"input": "a", "encoding_format": "int8"},
        {"input": "a", "dimensions": 0},
        {"input": "a", "truncate_prompt_tokens": -2},
        {"input": "a", "priority": 2**31},
        # vLLM's chat-style input, and its other pooling extensions, are not taken.
        {"messages": [{"role": "user", "content": "hi"}]},
        {"input": "a", "embed_dtype": "float16"},
    ],
)
def test_invalid_requests_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest.model_validate({"model": "m", **fields})


def test_pooling_parameters_carry_only_what_was_set() -> None:
    assert EmbeddingRequest(input="a").pooling_parameters() == {}
    request = EmbeddingRequest(input="a", dimensions=64, normalize=False, truncate_prompt_tokens=-1, user="u")
    assert request.pooling_parameters() == {"dimensions": 64, "normalize": False, "truncate_prompt_tokens": -1}


def test_base64_is_the_little_endian_float32_bytes() -> None:
    vector = np.array([0.25, -1.5, 3.0e-8], dtype=np.float32)
    assert encoded(vector, "float") == pytest.approx([0.25, -1.5, 3.0e-8])
    decoded = np.frombuffer(base64.b64decode(encoded(vector, "base64")), dtype="<f4")  # type: ignore[arg-type]
    assert decoded.tolist() == vector.tolist()


def test_refusals_before_triton_and_503_without_it(offline_context: ServingContext) -> None:
    config = dataclasses.replace(offline_context.config, max_model_len=8)
    # A client of its own: aio gRPC channels belong to the event loop of the TestClient that opened them.
    triton = TritonClient(config.triton_url, config.triton_model)
    app = build_app(dataclasses.replace(offline_context, config=config, triton=triton, metrics=FrontendMetrics()))
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:

        def embed(**fields: object):
            return client.post("/v1/embeddings", json={"model": MODEL_NAME, **fields})

        assert_error(embed(input=""), 400, "input")
        assert_error(embed(input=["a", ""]), 400, "input")
        assert_error(embed(input=[1, 10**9]), 400, "input")
        assert_error(embed(input="a", model="gpt-9"), 404, "model", "model_not_found")
        long = "one two three four five six seven eight nine"
        error = assert_error(embed(input=["short", long]), 400, "input", "context_length_exceeded")
        assert "8 tokens" in error["message"] and "input 1" in error["message"]
        assert_error(embed(input=list(range(9))), 400, "input", "context_length_exceeded")
        # Within the context once truncated, or exactly at it (an embedding generates nothing), it goes to
        # Triton, which is not there.
        assert_error(embed(input=long, truncate_prompt_tokens=4), 503, code="service_unavailable")
        assert_error(embed(input=long, truncate_prompt_tokens=-1), 503)
        assert_error(embed(input=list(range(8))), 503)
        text = client.get("/metrics").text
        assert 'frontend_requests_total{endpoint="/v1/embeddings",status="400"}' in text
