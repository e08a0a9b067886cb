"""SageMaker's (and vLLM's) POST /invocations on the session's real stack: the body's shape picks the
endpoint, and the answer is that endpoint's, byte for byte where the engine is deterministic."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.frontend.conftest import MODEL_NAME
from tests.servers import FrontendServer

pytestmark = pytest.mark.slow


def post(frontend: FrontendServer, path: str, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {frontend.api_key}"}
    return httpx.post(f"{frontend.root_url}{path}", json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        (
            "/v1/chat/completions",
            {
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "Name a colour."}],
                "max_tokens": 6,
                "temperature": 0,
            },
            lambda reply: reply["choices"][0]["message"]["content"],
        ),
        (
            "/v1/completions",
            {"model": MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0},
            lambda reply: reply["choices"][0]["text"],
        ),
        (
            "/v1/embeddings",
            {"model": MODEL_NAME, "input": "a short text"},
            lambda reply: reply["data"][0]["embedding"],
        ),
        (
            "/v1/rerank",
            {"model": MODEL_NAME, "query": "capital", "documents": ["Paris", "a cat"]},
            lambda reply: [result["index"] for result in reply["results"]],
        ),
    ],
)
def test_the_body_picks_the_endpoint(
    frontend_server: FrontendServer, path: str, body: dict, answer: Any
) -> None:
    invoked, direct = post(frontend_server, "/invocations", body), post(frontend_server, path, body)
    assert invoked.status_code == direct.status_code == 200, invoked.text
    assert answer(invoked.json()) == pytest.approx(answer(direct.json()))


def test_a_body_of_no_known_shape_is_a_400(frontend_server: FrontendServer) -> None:
    reply = post(frontend_server, "/invocations", {"model": MODEL_NAME, "question": "?"})
    assert reply.status_code == 400 and "fits none of the request types" in reply.json()["error"]["message"]
    broken = httpx.post(
        f"{frontend_server.root_url}/invocations",
        content=b"{not json",
        headers={"Authorization": f"Bearer {frontend_server.api_key}", "Content-Type": "application/json"},
    )
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"
