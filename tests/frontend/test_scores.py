"""/score and /rerank without Triton: the request models and vLLM's pairing rule, the handler over a stand-in
for Triton's embeddings (each distinct text embedded once, cosine similarities, rerank order and top_n), and
the refusals made before Triton is asked (the served path is tests/integration/test_scores_served.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from frontend.app import build_app
from frontend.metrics import FrontendMetrics
from frontend.protocol.embeddings import MAX_INPUTS
from frontend.protocol.scores import RerankRequest, ScoreRequest
from frontend.serving.context import ServingContext
from frontend.serving.scores import ScoreHandler, cosine
from frontend.triton_client import Embedding, EmbeddingInput, TritonClient
from tests.frontend.conftest import API_KEY, MODEL_NAME
from tests.frontend.test_app import assert_error


@pytest.mark.parametrize(
    ("text_1", "text_2"),
    [("a", "b"), ("a", ["b", "c", "d"]), (["a"], ["b", "c"]), (["a", "b"], ["c", "d"]), (["a"], "b")],
)
def test_vllms_pairings_are_taken(text_1: object, text_2: object) -> None:
    request = ScoreRequest.model_validate({"text_1": text_1, "text_2": text_2})
    assert request.model is None and request.truncate_prompt_tokens is None and request.priority == 0


@pytest.mark.parametrize(
    "fields",
    [
        # N:1 and N:M (N != M) break vLLM's rule: 1:1, 1:N or N:N.
        {"text_1": ["a", "b"], "text_2": "c"},
        {"text_1": ["a", "b"], "text_2": ["c", "d", "e"]},
        {"text_1": "", "text_2": "b"},
        {"text_1": "a", "text_2": []},
        {"text_1": ["a", ""], "text_2": ["b", "c"]},
        {"text_1": "a", "text_2": ["b"] * (MAX_INPUTS + 1)},
        {"text_1": "a", "text_2": [1, 2]},
        {"text_1": "a"},
        {"text_1": "a", "text_2": "b", "truncate_prompt_tokens": -2},
        {"text_1": "a", "text_2": "b", "priority": 2**31},
        # vLLM's cross-encoder and multimodal extensions are not taken.
        {"text_1": "a", "text_2": "b", "activation": True},
        {"text_1": "a", "text_2": "b", "mm_processor_kwargs": {}},
    ],
)
def test_invalid_score_requests_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate(fields)


def test_the_pairing_refusal_names_the_rule() -> None:
    with pytest.raises(ValidationError, match=r"1:1, 1:N or N:N.*got 2 text_1 and 3 text_2"):
        ScoreRequest.model_validate({"text_1": ["a", "b"], "text_2": ["c", "d", "e"]})


@pytest.mark.parametrize(
    "fields",
    [
        {"query": "", "documents": ["a"]},
        {"query": "q", "documents": []},
        {"query": "q", "documents": ["a", ""]},
        {"query": "q", "documents": "a"},
        {"query": ["q"], "documents": ["a"]},
        {"query": "q", "documents": ["a"] * (MAX_INPUTS + 1)},
        {"query": "q", "documents": ["a"], "top_n": -1},
        {"query": "q", "documents": ["a"], "truncate_prompt_tokens": -2},
        {"documents": ["a"]},
        # Cohere's return_documents and rank_fields: the documents always come back.
        {"query": "q", "documents": ["a"], "return_documents": False},
    ],
)
def test_invalid_rerank_requests_are_refused(fields: dict) -> None:
    with pytest.raises(ValidationError):
        RerankRequest.model_validate(fields)


def test_rerank_defaults() -> None:
    request = RerankRequest.model_validate({"query": "q", "documents": ["a", "b"]})
    assert request.top_n == 0 and request.model is None and request.truncate_prompt_tokens is None


def test_cosine_is_scale_free_and_safe_at_zero() -> None:
    a = np.array([3.0, 4.0], dtype=np.float32)
    assert cosine(a, a * 10) == pytest.approx(1.0, abs=1e-12)
    assert cosine(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert cosine(a, np.array([-4.0, 3.0], dtype=np.float32)) == pytest.approx(0.0, abs=1e-12)
    assert cosine(a, np.zeros(2, dtype=np.float32)) == 0.0


class FakeTriton:
    """Answers embedding requests with a vector of its token ids (not unit length), recording each request."""

    def __init__(self) -> None:
        self.requests: list[EmbeddingInput] = []

    async def embed(self, request: EmbeddingInput) -> Embedding:
        self.requests.append(request)
        return Embedding(
            vector=fake_vector(request.prompt_token_ids),
            num_input_tokens=len(request.prompt_token_ids),
            num_cached_tokens=0,
        )


def fake_vector(token_ids: list[int]) -> np.ndarray:
    return np.array([len(token_ids), sum(token_ids) % 97 + 1, token_ids[0] % 13 + 1], dtype=np.float32)


@pytest.fixture()
def faked(offline_context: ServingContext) -> tuple[ScoreHandler, FakeTriton]:
    triton = FakeTriton()
    # A context length of its own: the stand-in cannot tell the engine's.
    config = dataclasses.replace(offline_context.config, max_model_len=64)
    context = dataclasses.replace(offline_context, config=config, triton=triton, metrics=FrontendMetrics())  # type: ignore[arg-type]
    return ScoreHandler(context), triton


def expected_score(context: ServingContext, first: str, second: str) -> float:
    a, b = (fake_vector(context.templater.encode(text, True)).astype(np.float64) for text in (first, second))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_one_text_against_many_embeds_each_distinct_text_once(faked: tuple[ScoreHandler, FakeTriton]) -> None:
    handler, triton = faked
    documents = ["Paris is in France.", "query", "Bridges cross rivers.", "Paris is in France."]
    reply = asyncio.run(handler.score(ScoreRequest(text_1="query", text_2=documents, priority=3), "score-1"))
    # The query once (though it is also the second document), the repeated document once.
    assert len(triton.requests) == 3
    assert [request.request_id for request in triton.requests] == ["score-1-0", "score-1-1", "score-1-2"]
    assert all(request.priority == 3 and request.pooling == {} for request in triton.requests)
    assert reply.id == "score-1" and reply.model == MODEL_NAME and reply.object == "list"
    assert [item.index for item in reply.data] == [0, 1, 2, 3]
    for item, document in zip(reply.data, documents, strict=True):
        assert item.object == "score"
        assert item.score == pytest.approx(expected_score(handler.ctx, "query", document), abs=1e-12)
    assert reply.data[1].score == pytest.approx(1.0, abs=1e-12)
    tokens = sum(len(request.prompt_token_ids) for request in triton.requests)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens


def test_lists_of_equal_length_pair_element_wise(faked: tuple[ScoreHandler, FakeTriton]) -> None:
    handler, triton = faked
    first, second = ["one", "two", "three"], ["uno", "two", "tres"]
    request = ScoreRequest(text_1=first, text_2=second, truncate_prompt_tokens=-1)
    reply = asyncio.run(handler.score(request, "score-2"))
    assert len(triton.requests) == 5 and triton.requests[0].pooling == {"truncate_prompt_tokens": -1}
    scores = [item.score for item in reply.data]
    assert scores == pytest.approx(
        [expected_score(handler.ctx, a, b) for a, b in zip(first, second, strict=True)]
    )
    assert scores[1] == pytest.approx(1.0, abs=1e-12)


def test_rerank_orders_by_score_and_keeps_top_n(faked: tuple[ScoreHandler, FakeTriton]) -> None:
    handler, triton = faked
    documents = ["alpha beta", "gamma", "a longer document about many things", "alpha beta", "query text"]
    expected = [expected_score(handler.ctx, "query text", document) for document in documents]
    order = sorted(range(len(documents)), key=lambda index: expected[index], reverse=True)
    full = asyncio.run(handler.rerank(RerankRequest(query="query text", documents=documents), "rerank-1"))
    assert [result.index for result in full.results] == order
    # Equal documents score equally and keep their order; the query itself scores 1.
    assert order.index(0) < order.index(3) and order[0] == 4
    for result in full.results:
        assert result.document.text == documents[result.index]
        assert result.relevance_score == pytest.approx(expected[result.index], abs=1e-12)
    assert full.id == "rerank-1" and full.model == MODEL_NAME
    assert full.usage.total_tokens == sum(len(request.prompt_token_ids) for request in triton.requests)
    assert len(triton.requests) == 4
    top = asyncio.run(
        handler.rerank(RerankRequest(query="query text", documents=documents, top_n=2), "rerank-2")
    )
    assert [result.index for result in top.results] == order[:2]
    more = asyncio.run(
        handler.rerank(RerankRequest(query="query text", documents=documents, top_n=9), "rerank-3")
    )
    assert [result.index for result in more.results] == order


def test_refusals_before_triton_and_503_without_it(offline_context: ServingContext) -> None:
    config = dataclasses.replace(offline_context.config, max_model_len=8)
    # A client of its own: aio gRPC channels belong to the event loop of the TestClient that opened them.
    triton = TritonClient(config.triton_url, config.triton_model)
    app = build_app(
        dataclasses.replace(offline_context, config=config, triton=triton, metrics=FrontendMetrics())
    )
    long = "one two three four five six seven eight nine"
    with TestClient(app, headers={"Authorization": f"Bearer {API_KEY}"}) as client:

        def post(path: str, **fields: object):
            return client.post(path, json={"model": MODEL_NAME, **fields})

        error = assert_error(post("/v1/score", text_1=["a", "b"], text_2=["c"]), 400, None, "invalid_value")
        assert "1:1, 1:N or N:N" in error["message"]
        assert_error(post("/v1/score", text_1="", text_2="b"), 400, "text_1")
        assert_error(post("/v1/score", text_1="a", text_2=[]), 400, "text_2")
        assert_error(post("/score", text_1="a", text_2="b", model="gpt-9"), 404, "model", "model_not_found")
        error = assert_error(
            post("/v1/score", text_1="a", text_2=["b", long]), 400, "text_2", "context_length_exceeded"
        )
        assert "8 tokens" in error["message"] and "text_2 1 " in error["message"]
        error = assert_error(
            post("/v1/score", text_1=long, text_2="b"), 400, "text_1", "context_length_exceeded"
        )
        assert "; text_1 has" in error["message"]
        assert_error(post("/v1/rerank", query="q", documents=[]), 400, "documents")
        assert_error(post("/v2/rerank", query="", documents=["a"]), 400, "query")
        assert_error(
            post("/rerank", query="q", documents=["a"], model="gpt-9"), 404, "model", "model_not_found"
        )
        assert_error(post("/v1/rerank", query=long, documents=["a"]), 400, "query", "context_length_exceeded")
        error = assert_error(post("/v1/rerank", query="q", documents=["a", long]), 400, "documents")
        assert "documents 1 " in error["message"]
        # Within the context once truncated, the texts go to Triton, which is not there.
        for path in ("/v1/score", "/score"):
            assert_error(
                post(path, text_1=long, text_2="b", truncate_prompt_tokens=4), 503, code="service_unavailable"
            )
        for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
            assert_error(post(path, query="q", documents=[long], truncate_prompt_tokens=-1), 503)
        text = client.get("/metrics").text
        for path in ("/v1/score", "/score", "/v1/rerank", "/rerank", "/v2/rerank"):
            assert f'frontend_requests_total{{endpoint="{path}",status="' in text, path
        assert 'frontend_requests_total{endpoint="/v1/score",status="400"}' in text
