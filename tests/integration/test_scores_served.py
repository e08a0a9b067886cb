"""/score and /rerank through the whole stack, the session's tritonserver and frontend, over plain HTTP (the
OpenAI SDK has no such calls): each score is the cosine similarity of the two texts' /v1/embeddings vectors,
pairs 1:N and N:N, rerank's order and top_n under its three paths, and refusals in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.frontend.conftest import MODEL_NAME
from tests.servers import FrontendServer

pytestmark = pytest.mark.slow

QUERY = "Where is the Eiffel Tower?"
DOCUMENTS = [
    "The Eiffel Tower stands in Paris, on the Champ de Mars.",
    "A recipe for bread: flour, water, salt and yeast.",
    "Bridges cross rivers where towns grew up on both banks.",
    "Paris is the capital of France.",
]
# Cosine similarities of float32 unit vectors, computed here and by the server in float64.
TOLERANCE = 1e-5
MAX_MODEL_LEN = 8192  # the cpu-default profile's


@pytest.fixture(scope="module")
def http(frontend_server: FrontendServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {frontend_server.api_key}"}
    with httpx.Client(base_url=frontend_server.root_url, headers=headers, timeout=120) as client:
        yield client


def post(http: httpx.Client, path: str, **body: Any) -> dict[str, Any]:
    response = http.post(path, json={"model": MODEL_NAME, **body})
    assert response.status_code == 200, response.text
    return response.json()


def embeddings(http: httpx.Client, texts: list[str]) -> dict[str, np.ndarray]:
    reply = post(http, "/v1/embeddings", input=texts, encoding_format="float")
    return {
        text: np.asarray(item["embedding"], dtype=np.float64)
        for text, item in zip(texts, reply["data"], strict=True)
    }


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def scores(reply: dict[str, Any]) -> list[float]:
    assert reply["object"] == "list" and reply["model"] == MODEL_NAME and reply["id"].startswith("score-")
    assert reply["created"] > 0
    assert [item["index"] for item in reply["data"]] == list(range(len(reply["data"])))
    assert all(item["object"] == "score" for item in reply["data"])
    return [item["score"] for item in reply["data"]]


def test_one_against_many_are_the_embeddings_cosine_similarities(http: httpx.Client) -> None:
    vectors = embeddings(http, [QUERY, *DOCUMENTS])
    # The query also among the documents: scored against itself it is 1.
    reply = post(http, "/v1/score", text_1=QUERY, text_2=[*DOCUMENTS, QUERY])
    got = scores(reply)
    expected = [cosine(vectors[QUERY], vectors[document]) for document in DOCUMENTS]
    assert np.abs(np.array(got[:-1]) - expected).max() < TOLERANCE
    assert got[-1] == pytest.approx(1.0, abs=TOLERANCE)
    # Each distinct text embedded once: the query's tokens counted once.
    tokens = post(http, "/v1/embeddings", input=[QUERY, *DOCUMENTS])["usage"]["prompt_tokens"]
    assert reply["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # /score is the same endpoint; a list of one text_1 is a 1:N pairing too.
    for path, text_1 in (("/score", QUERY), ("/v1/score", [QUERY])):
        again = scores(post(http, path, text_1=text_1, text_2=DOCUMENTS))
        assert np.abs(np.array(again) - expected).max() < TOLERANCE


def test_lists_of_equal_length_pair_element_wise(http: httpx.Client) -> None:
    first = [QUERY, DOCUMENTS[1], DOCUMENTS[2]]
    second = [DOCUMENTS[0], DOCUMENTS[1], DOCUMENTS[3]]
    vectors = embeddings(http, [*first, *second])
    got = scores(post(http, "/v1/score", text_1=first, text_2=second))
    expected = [cosine(vectors[a], vectors[b]) for a, b in zip(first, second, strict=True)]
    assert np.abs(np.array(got) - expected).max() < TOLERANCE
    assert got[1] == pytest.approx(1.0, abs=TOLERANCE)
    # One pair, as strings.
    [single] = scores(post(http, "/v1/score", text_1=QUERY, text_2=DOCUMENTS[0]))
    assert single == pytest.approx(expected[0], abs=TOLERANCE)


def test_rerank_orders_by_the_same_similarity_under_every_path(http: httpx.Client) -> None:
    vectors = embeddings(http, [QUERY, *DOCUMENTS])
    similarity = [cosine(vectors[QUERY], vectors[document]) for document in DOCUMENTS]
    order = sorted(range(len(DOCUMENTS)), key=lambda index: similarity[index], reverse=True)
    reply = post(http, "/v1/rerank", query=QUERY, documents=DOCUMENTS)
    assert set(reply) == {"id", "model", "usage", "results"}
    assert reply["id"].startswith("rerank-") and reply["model"] == MODEL_NAME
    assert (
        reply["usage"]["total_tokens"]
        == post(http, "/v1/embeddings", input=[QUERY, *DOCUMENTS])["usage"]["total_tokens"]
    )
    results = reply["results"]
    assert [result["index"] for result in results] == order
    for result in results:
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
        assert result["relevance_score"] == pytest.approx(similarity[result["index"]], abs=TOLERANCE)
    scores_in_order = [result["relevance_score"] for result in results]
    assert scores_in_order == sorted(scores_in_order, reverse=True)
    top = post(http, "/v1/rerank", query=QUERY, documents=DOCUMENTS, top_n=2)["results"]
    assert [result["index"] for result in top] == order[:2]
    for path in ("/rerank", "/v2/rerank"):
        same = post(http, path, query=QUERY, documents=DOCUMENTS, top_n=2)
        assert [result["index"] for result in same["results"]] == order[:2]
        for mine, theirs in zip(same["results"], top, strict=True):
            assert mine["relevance_score"] == pytest.approx(theirs["relevance_score"], abs=TOLERANCE)


def assert_openai_error(response: httpx.Response, status: int, param: str | None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    return str(error["message"])


def test_refusals_are_openai_errors_and_serving_goes_on(http: httpx.Client) -> None:
    mismatched = http.post(
        "/v1/score", json={"model": MODEL_NAME, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}
    )
    assert "1:1, 1:N or N:N" in assert_openai_error(mismatched, 400, None)
    empty = http.post("/v1/rerank", json={"model": MODEL_NAME, "query": "q", "documents": []})
    assert_openai_error(empty, 400, "documents")
    for path, body in (
        ("/v1/score", {"text_1": "a", "text_2": "b"}),
        ("/v2/rerank", {"query": "q", "documents": ["a"]}),
    ):
        unknown = http.post(path, json={"model": "no-such-model", **body})
        assert "no-such-model" in assert_openai_error(unknown, 404, "model")
    too_long = http.post(
        "/v1/score", json={"model": MODEL_NAME, "text_1": "hi", "text_2": "word " * (MAX_MODEL_LEN + 10)}
    )
    assert "maximum context length" in assert_openai_error(too_long, 400, "text_2")
    [after] = scores(post(http, "/v1/score", text_1="still serving", text_2="still serving"))
    assert after == pytest.approx(1.0, abs=TOLERANCE)
