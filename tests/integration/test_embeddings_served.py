"""Embeddings through the whole stack, the session's tritonserver and frontend, with the official OpenAI SDK:
the vectors are Hugging Face's last hidden state of the last token, L2-normalized (the default pooling of a
checkpoint without a sentence-transformers config); both encodings, token-id inputs, Matryoshka dimensions and
raw vectors; vLLM's chat form (`messages`, embedded as their templated token ids) and its /pooling (the same
vectors); refusals in OpenAI's shape; and the llm model's own `pooling_parameters` over Triton."""

from __future__ import annotations

import base64
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import torch
from transformers import AutoModel, AutoTokenizer
from tritonclient.utils import InferenceServerException

from tests.engine.conftest import torch_threads
from tests.frontend.conftest import MODEL_NAME
from tests.integration.triton_requests import scrape_metric, stream_outputs
from tests.servers import FrontendServer, TritonServer

pytestmark = pytest.mark.slow

TEXTS = [
    "The capital of France is Paris.",
    "A long passage about bridges, rivers and the towns built where one meets the other. " * 3,
    "hi",
]
HIDDEN_SIZE = 576  # SmolLM2-135M's
MAX_MODEL_LEN = 8192  # the cpu-default profile's
MESSAGES = [
    {"role": "system", "content": "You embed sentences for search."},
    {"role": "user", "content": "The capital of France is Paris."},
]


@pytest.fixture(scope="module")
def client(frontend_server: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)


@pytest.fixture(scope="module")
def tokenizer(model_path: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_path)


@pytest.fixture(scope="module")
def token_ids(tokenizer: Any) -> list[list[int]]:
    """TEXTS as the frontend tokenizes them (with the tokenizer's special tokens)."""
    return [tokenizer.encode(text) for text in TEXTS]


@pytest.fixture(scope="module")
def last_hidden(model_path: Path, token_ids: list[list[int]]) -> list[np.ndarray]:
    """Hugging Face's final hidden state (after the last norm) of each text's last token, float32 on the CPU."""
    model = AutoModel.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.inference_mode(), torch_threads(1):
        return [model(torch.tensor([ids])).last_hidden_state[0, -1].numpy() for ids in token_ids]


def vectors(reply: openai.types.CreateEmbeddingResponse) -> list[np.ndarray]:
    assert [item.index for item in reply.data] == list(range(len(reply.data)))
    return [np.asarray(item.embedding, dtype=np.float64) for item in reply.data]


def unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def test_vectors_are_hugging_faces_last_token_normalized(
    client: openai.OpenAI, token_ids: list[list[int]], last_hidden: list[np.ndarray]
) -> None:
    # The first text twice: the same vector, whether or not the second copy found the first's cached blocks.
    reply = client.embeddings.create(model=MODEL_NAME, input=[*TEXTS, TEXTS[0]], encoding_format="float")
    assert reply.object == "list" and reply.model == MODEL_NAME and len(reply.data) == len(TEXTS) + 1
    assert reply.data[0].object == "embedding"
    got = vectors(reply)
    for index, vector in enumerate(got):
        assert vector.shape == (HIDDEN_SIZE,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        expected = unit(last_hidden[index % len(TEXTS)].astype(np.float64))
        assert np.abs(vector - expected).max() < 1e-4, index
    assert np.abs(got[0] - got[-1]).max() < 1e-5
    prompt_tokens = sum(len(ids) for ids in token_ids) + len(token_ids[0])
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == prompt_tokens
    # vLLM's extensions of the response.
    assert reply.model_extra is not None and reply.model_extra["id"].startswith("embd-")
    assert reply.model_extra["created"] > 0


def test_base64_float_and_token_ids_give_the_same_vectors(
    client: openai.OpenAI, token_ids: list[list[int]]
) -> None:
    floats = vectors(client.embeddings.create(model=MODEL_NAME, input=TEXTS, encoding_format="float"))
    # The SDK asks for base64 unless told otherwise, and decodes it; asked explicitly, it leaves it encoded.
    decoded = vectors(client.embeddings.create(model=MODEL_NAME, input=TEXTS))
    raw = client.embeddings.create(model=MODEL_NAME, input=TEXTS, encoding_format="base64")
    encoded = [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in raw.data]  # type: ignore[arg-type]
    by_ids = vectors(client.embeddings.create(model=MODEL_NAME, input=token_ids, encoding_format="float"))
    one_list = vectors(client.embeddings.create(model=MODEL_NAME, input=token_ids[0], encoding_format="float"))
    for index, expected in enumerate(floats):
        for other in (decoded[index], encoded[index].astype(np.float64), by_ids[index]):
            assert other.shape == expected.shape and np.abs(other - expected).max() < 1e-6
    assert len(one_list) == 1 and np.abs(one_list[0] - floats[0]).max() < 1e-6


def test_dimensions_and_raw_vectors(client: openai.OpenAI, last_hidden: list[np.ndarray]) -> None:
    [short] = vectors(client.embeddings.create(model=MODEL_NAME, input=TEXTS[0], dimensions=64, encoding_format="float"))
    assert short.shape == (64,) and np.linalg.norm(short) == pytest.approx(1.0, abs=1e-5)
    expected = last_hidden[0].astype(np.float64)
    assert np.abs(short - unit(expected[:64])).max() < 1e-4
    reply = client.embeddings.create(
        model=MODEL_NAME, input=TEXTS[0], encoding_format="float", extra_body={"normalize": False}
    )
    [raw] = vectors(reply)
    # Not normalized: the hidden state itself, to float32 precision of its size.
    assert np.linalg.norm(raw) == pytest.approx(np.linalg.norm(expected), rel=1e-4)
    assert np.abs(raw - expected).max() < 1e-4 * max(1.0, float(np.abs(expected).max()))


def test_refusals_are_openai_errors_and_serving_goes_on(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model=MODEL_NAME, input="word " * (MAX_MODEL_LEN + 10))
    assert too_long.value.code == "context_length_exceeded" and str(MAX_MODEL_LEN) in too_long.value.message
    with pytest.raises(openai.BadRequestError) as empty:
        client.embeddings.create(model=MODEL_NAME, input="")
    assert empty.value.param == "input"
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL_NAME, input=[])
    # Past the hidden size: the engine refuses, in the same shape.
    with pytest.raises(openai.BadRequestError) as too_wide:
        client.embeddings.create(model=MODEL_NAME, input="hi", dimensions=HIDDEN_SIZE + 1)
    assert too_wide.value.param == "dimensions" and str(HIDDEN_SIZE) in too_wide.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")
    # Cut to the context by truncate_prompt_tokens, the long input is embedded.
    truncated = client.embeddings.create(
        model=MODEL_NAME, input="word " * (MAX_MODEL_LEN + 10), extra_body={"truncate_prompt_tokens": 16}
    )
    assert truncated.usage.prompt_tokens == 16
    after = client.embeddings.create(model=MODEL_NAME, input="still serving", encoding_format="float")
    assert len(after.data[0].embedding) == HIDDEN_SIZE


def chat_embedding(client: openai.OpenAI, **body: Any) -> openai.types.CreateEmbeddingResponse:
    """/v1/embeddings in vLLM's chat form, which the SDK's embeddings.create (it requires `input`) cannot send."""
    return client.post(
        "/embeddings",
        cast_to=openai.types.CreateEmbeddingResponse,
        body={"model": MODEL_NAME, "encoding_format": "float", **body},
    )


def pooling(client: openai.OpenAI, frontend_server: FrontendServer, **body: Any) -> dict[str, Any]:
    """vLLM's /pooling, served at the root as vLLM serves it (not under the SDK's /v1)."""
    reply = client.post(f"{frontend_server.root_url}/pooling", cast_to=object, body={"model": MODEL_NAME, **body})
    assert isinstance(reply, dict)
    return reply


def pooled(reply: dict[str, Any]) -> list[np.ndarray]:
    assert reply["object"] == "list" and reply["model"] == MODEL_NAME and reply["id"].startswith("pool-")
    assert reply["created"] > 0 and set(reply["usage"]) == {"prompt_tokens", "total_tokens"}
    assert [item["index"] for item in reply["data"]] == list(range(len(reply["data"])))
    assert all(item["object"] == "pooling" for item in reply["data"])
    return [
        np.frombuffer(base64.b64decode(item["data"]), dtype="<f4").astype(np.float64)
        if isinstance(item["data"], str)
        else np.asarray(item["data"], dtype=np.float64)
        for item in reply["data"]
    ]


def test_messages_embed_as_their_templated_token_ids(client: openai.OpenAI, tokenizer: Any) -> None:
    """The chat form is the conversation's token ids (the chat template, rendered here by Hugging Face) as one
    token-id input, under each of vLLM's template flags; its default adds no generation prompt."""
    finished = [*MESSAGES, {"role": "assistant", "content": "Paris"}]
    cases = [
        ({}, MESSAGES, {}),
        ({"add_generation_prompt": True}, MESSAGES, {"add_generation_prompt": True}),
        ({"continue_final_message": True}, finished, {"continue_final_message": True}),
    ]
    got = []
    for flags, messages, template_flags in cases:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **template_flags)
        ids = tokenizer.encode(text, add_special_tokens=False)
        reply = chat_embedding(client, messages=messages, **flags)
        assert reply.object == "list" and reply.model == MODEL_NAME and len(reply.data) == 1
        assert reply.usage.prompt_tokens == reply.usage.total_tokens == len(ids)
        [vector] = vectors(reply)
        [expected] = vectors(client.embeddings.create(model=MODEL_NAME, input=ids, encoding_format="float"))
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)
        assert np.abs(vector - expected).max() < 1e-6, flags
        got.append(vector)
    # The flags change what is embedded.
    assert np.abs(got[0] - got[1]).max() > 1e-3 and np.abs(got[0] - got[2]).max() > 1e-3
    # The rest of the request applies as to an input: raw vectors, Matryoshka dimensions.
    text = tokenizer.apply_chat_template(MESSAGES, tokenize=False)
    [raw] = vectors(chat_embedding(client, messages=MESSAGES, normalize=False, dimensions=64))
    [expected_raw] = vectors(
        client.embeddings.create(
            model=MODEL_NAME,
            input=tokenizer.encode(text, add_special_tokens=False),
            dimensions=64,
            encoding_format="float",
            extra_body={"normalize": False},
        )
    )
    assert raw.shape == (64,) and np.abs(raw - expected_raw).max() < 1e-4 * max(1.0, float(np.abs(raw).max()))


def test_pooling_answers_the_embeddings_vectors(
    client: openai.OpenAI, frontend_server: FrontendServer, token_ids: list[list[int]]
) -> None:
    """vLLM's /pooling for an embedding model is its `embed` task: /v1/embeddings' vectors (normalized unless
    told otherwise), in vLLM's PoolingResponse, from texts, token ids or messages, as floats or base64."""
    expected = vectors(client.embeddings.create(model=MODEL_NAME, input=TEXTS, encoding_format="float"))
    reply = pooling(client, frontend_server, input=TEXTS)
    tokens = sum(len(ids) for ids in token_ids)
    assert reply["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    for name, other in (
        ("float", pooled(reply)),
        ("base64", pooled(pooling(client, frontend_server, input=TEXTS, encoding_format="base64"))),
        ("token ids", pooled(pooling(client, frontend_server, input=token_ids, task="embed"))),
    ):
        assert len(other) == len(expected), name
        for vector, want in zip(other, expected, strict=True):
            assert vector.shape == (HIDDEN_SIZE,) and np.abs(vector - want).max() < 1e-6, name
    # Raw vectors under vLLM's either name of the flag.
    [raw] = vectors(
        client.embeddings.create(
            model=MODEL_NAME, input=TEXTS[0], encoding_format="float", extra_body={"normalize": False}
        )
    )
    assert np.linalg.norm(raw) > 1.5  # far from unit length: the test could tell them apart
    for flag in ("normalize", "use_activation"):
        [vector] = pooled(pooling(client, frontend_server, input=TEXTS[0], **{flag: False}))
        assert np.abs(vector - raw).max() < 1e-4 * max(1.0, float(np.abs(raw).max())), flag
    [chat] = vectors(chat_embedding(client, messages=MESSAGES))
    [by_messages] = pooled(pooling(client, frontend_server, messages=MESSAGES))
    assert np.abs(by_messages - chat).max() < 1e-6


def test_chat_form_and_pooling_refusals_are_openai_errors(
    client: openai.OpenAI, frontend_server: FrontendServer
) -> None:
    def post_embeddings(**body: Any) -> Any:
        return chat_embedding(client, **body)

    def post_pooling(**body: Any) -> Any:
        return pooling(client, frontend_server, **body)

    for post in (post_embeddings, post_pooling):
        with pytest.raises(openai.BadRequestError) as both:
            post(input="hi", messages=MESSAGES)
        assert "exactly one of 'input' and 'messages'" in both.value.message
        assert isinstance(both.value.body, dict) and set(both.value.body) == {"message", "type", "param", "code"}
        with pytest.raises(openai.BadRequestError) as neither:
            post()
        assert neither.value.code == "invalid_value"
        with pytest.raises(openai.NotFoundError) as unknown:
            post(messages=MESSAGES, model="no-such-model")
        assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
        with pytest.raises(openai.BadRequestError) as too_long:
            post(messages=[{"role": "user", "content": "word " * (MAX_MODEL_LEN + 10)}])
        assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as dimensions:
        post_pooling(input="hi", dimensions=8)
    assert dimensions.value.param == "dimensions"
    with pytest.raises(openai.BadRequestError) as task:
        post_pooling(input="hi", task="token_embed")
    assert task.value.param == "task"
    # Still serving.
    assert len(pooled(post_pooling(input="still serving"))[0]) == HIDDEN_SIZE


def test_the_llm_models_pooling_parameters_give_the_same_vector(
    client: openai.OpenAI, triton_server: TritonServer, token_ids: list[list[int]]
) -> None:
    [expected] = vectors(client.embeddings.create(model=MODEL_NAME, input=TEXTS[0], encoding_format="float"))
    [response] = stream_outputs(triton_server.grpc_url, {"input_ids": token_ids[0], "pooling_parameters": {}}, "llm")
    assert set(response) == {"embedding", "num_input_tokens", "num_cached_tokens", "finish_reason", "request_id"}
    assert response["embedding"].dtype == np.float32
    assert np.abs(response["embedding"].astype(np.float64) - expected).max() < 1e-6
    assert response["num_input_tokens"].tolist() == [len(token_ids[0])]
    assert response["finish_reason"].tolist() == [b"stop"]
    [short] = stream_outputs(
        triton_server.grpc_url,
        {"input_ids": token_ids[0], "pooling_parameters": {"dimensions": 8, "normalize": False}, "stream": True},
        "llm",
    )
    assert short["embedding"].shape == (8,)
    with pytest.raises(InferenceServerException, match="does not apply to an embedding request"):
        stream_outputs(
            triton_server.grpc_url, {"input_ids": token_ids[0], "pooling_parameters": {}, "max_tokens": 4}, "llm"
        )


def test_a_client_that_leaves_aborts_its_embeddings(
    frontend_server: FrontendServer, triton_server: TritonServer
) -> None:
    """32 inputs of nearly the whole context: over a minute of prefill on two cores if nothing aborted them
    (16 took 34 s), against the 4 s the client waits and the 20 s the test then allows."""
    body = {"model": MODEL_NAME, "input": [[7] * (MAX_MODEL_LEN - 8)] * 32}
    frontend_server.leave_and_expect_release(
        "/embeddings", body, lambda: engine_requests(triton_server), "the embeddings", release_s=20.0
    )


def engine_requests(triton_server: TritonServer) -> float:
    """Requests the engine holds, running or waiting (Triton's gauges, refreshed every 0.5 s)."""
    with urllib.request.urlopen(triton_server.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return scrape_metric(text, "llm_num_requests_running") + scrape_metric(text, "llm_num_requests_waiting")
