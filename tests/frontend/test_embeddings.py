"""/v1/embeddings and /pooling without Triton: the request models (both input forms), the vector encodings,
and the refusals made before Triton is asked (the served path is tests/integration/test_embeddings_served.py)."""

from __future__ import annotations

import base64
import dataclasses
import functools

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from frontend.app import build_app
from frontend.metrics import FrontendMetrics
from frontend.protocol.embeddings import MAX_INPUTS, EmbeddingRequest
from frontend.protocol.pooling import PoolingRequest
from frontend.serving.context import ServingContext
from frontend.serving.embeddings import encoded
from frontend.triton_client import TritonClient
from tests.frontend.conftest import API_KEY, MODEL_NAME
from tests.frontend.test_app import assert_error

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


@pytest.mark.parametrize("value", ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_the_four_input_forms(value: object) -> None:
    request = EmbeddingRequest.model_validate({"model": "m", "input": value})
    assert request.input == value and request.messages is None and request.encoding_format == "float"
    # None: special tokens for texts, none for messages (the handler's reading, as vLLM's defaults).
    assert request.add_special_tokens is None


def test_the_chat_form_has_vllms_embedding_defaults() -> None:
    request = EmbeddingRequest.model_validate({"model": "m", "messages": MESSAGES})
    assert request.input is None and [message.text() for message in request.messages or []] == ["Be brief.", "hi"]
    assert not request.add_generation_prompt and not request.continue_final_message
    assert request.add_special_tokens is None and request.chat_template is None
    request = EmbeddingRequest.model_validate(
        {
            "messages": [*MESSAGES, {"role": "assistant", "content": "Hel"}],
            "continue_final_message": True,
            "add_special_tokens": True,
            "chat_template": "{{ messages[0].content }}",
            "chat_template_kwargs": {"enable_thinking": False},
        }
    )
    assert request.continue_final_message and request.add_special_tokens


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
        # Exactly one of the two forms.
        {},
        {"input": "a", "messages": MESSAGES},
        {"messages": []},
        # The chat form's fields do nothing to an `input`.
        {"input": "a", "add_generation_prompt": False},
        {"input": "a", "chat_template": "{{ messages }}"},
        {"messages": MESSAGES, "add_generation_prompt": True, "continue_final_message": True},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        # vLLM's other pooling extensions are not taken.
        {"input": "a", "embed_dtype": "float16"},
        {"messages": MESSAGES, "mm_processor_kwargs": {}},
        {"messages": MESSAGES, "tools": []},
    ],
)
def test_invalid_requests_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        EmbeddingRequest.model_validate({"model": "m", **fields})


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"input": "a", "messages": MESSAGES},
        # vLLM refuses dimensions on /pooling; per-token and classification tasks need poolings this engine
        # does not have.
        {"input": "a", "dimensions": 8},
        {"input": "a", "task": "token_embed"},
        {"input": "a", "task": "classify"},
        {"input": "a", "encoding_format": "bytes"},
        {"input": "a", "normalize": True, "use_activation": False},
        {"input": "a", "softmax": True},
    ],
)
def test_invalid_pooling_requests_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        PoolingRequest.model_validate({"model": "m", **fields})


def test_pooling_requests_map_onto_the_embedding_parameters() -> None:
    assert PoolingRequest(input="a", task="embed").pooling_parameters() == {}
    assert PoolingRequest.model_validate({"messages": MESSAGES}).pooling_parameters() == {}
    # vLLM's newer name of normalize on /pooling.
    assert PoolingRequest(input="a", use_activation=False).pooling_parameters() == {"normalize": False}
    both = PoolingRequest(input=[1, 2], normalize=False, use_activation=False, truncate_prompt_tokens=1)
    assert both.pooling_parameters() == {"normalize": False, "truncate_prompt_tokens": 1}


def test_pooling_parameters_carry_only_what_was_set() -> None:
    assert EmbeddingRequest(input="a").pooling_parameters() == {}
    assert EmbeddingRequest.model_validate({"messages": MESSAGES}).pooling_parameters() == {}
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


def test_chat_form_and_pooling_refusals_before_triton(offline_context: ServingContext) -> None:
    config = dataclasses.replace(offline_context.config, max_model_len=8)
    triton = TritonClient(config.triton_url, config.triton_model)
    app = build_app(dataclasses.replace(offline_context, config=config, triton=triton, metrics=FrontendMetrics()))
    # Renders the messages' contents alone: a conversation of a few tokens.
    bare = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:

        def post_to(path: str, **fields: object):
            return client.post(path, json={"model": MODEL_NAME, **fields})

        for path in ("/v1/embeddings", "/pooling"):
            post = functools.partial(post_to, path)
            both = assert_error(post(input="a", messages=MESSAGES), 400, code="invalid_value")
            assert "exactly one of 'input' and 'messages'" in both["message"]
            assert_error(post(), 400, code="invalid_value")
            assert_error(post(input="a", add_generation_prompt=True), 400, code="invalid_value")
            assert_error(post(messages=MESSAGES, embed_dtype="float16"), 400, "embed_dtype")
            assert_error(post(messages=MESSAGES, model="gpt-9"), 404, "model", "model_not_found")
            # The template fails on these messages: the client's error, naming them.
            assert_error(post(messages=MESSAGES, chat_template="{{ raise_exception('no') }}"), 400, "messages")
            # SmolLM2's template, role markers and all, renders more tokens than this context holds.
            error = assert_error(post(messages=MESSAGES), 400, "messages", "context_length_exceeded")
            assert "messages has" in error["message"]
            assert_error(post(messages=MESSAGES, chat_template=bare), 503, code="service_unavailable")
            assert_error(post(input="hello", encoding_format="base64"), 503)
        assert_error(client.post("/pooling", json={"input": "a", "dimensions": 8}), 400, "dimensions")
        assert_error(client.post("/pooling", json={"input": "a", "task": "token_embed"}), 400, "task")
        text = client.get("/metrics").text
        assert 'frontend_requests_total{endpoint="/pooling",status="400"}' in text
