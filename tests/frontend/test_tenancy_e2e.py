"""Tenants and CORS through the OpenAI SDK against a real frontend and tritonserver.

The frontend here accepts two keys with `--isolate-api-keys` and allows one browser origin: a key must not
see, continue, cancel or delete another key's stored responses or conversations, nor hit its prefix-cache
blocks.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.frontend.conftest import MODEL_NAME
from tests.servers import FrontendServer, TritonServer, start_frontend

pytestmark = pytest.mark.slow

ALICE, BOB = "key-alice", "key-bob"
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def tenant_frontend(
    model_path: Path, triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FrontendServer]:
    log_dir = tmp_path_factory.mktemp("frontend-tenants")
    args = ("--api-key", ALICE, BOB, "--isolate-api-keys", "--allowed-origins", ORIGIN)
    frontend = start_frontend(model_path, triton_server, log_dir, api_key=None, extra_args=args)
    try:
        yield frontend
    finally:
        frontend.process.stop()


def sdk(server: FrontendServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def test_stored_responses_belong_to_the_key_that_made_them(tenant_frontend: FrontendServer) -> None:
    alice, bob = sdk(tenant_frontend, ALICE), sdk(tenant_frontend, BOB)
    first = alice.responses.create(model=MODEL_NAME, input="Hi", max_output_tokens=2)
    assert alice.responses.retrieve(first.id).id == first.id

    for attempt in (
        lambda: bob.responses.retrieve(first.id),
        lambda: bob.responses.input_items.list(first.id),
        lambda: bob.responses.cancel(first.id),
        lambda: bob.responses.delete(first.id),
    ):
        with pytest.raises(openai.NotFoundError, match=first.id):
            attempt()
    with pytest.raises(openai.BadRequestError, match="was not found"):
        bob.responses.create(model=MODEL_NAME, input="More", previous_response_id=first.id, max_output_tokens=2)

    # Bob's failed attempts changed nothing: Alice continues and deletes her own response.
    second = alice.responses.create(
        model=MODEL_NAME, input="More", previous_response_id=first.id, max_output_tokens=2
    )
    assert second.previous_response_id == first.id
    alice.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(first.id)


def test_conversations_belong_to_the_key_that_made_them(tenant_frontend: FrontendServer) -> None:
    alice, bob = sdk(tenant_frontend, ALICE), sdk(tenant_frontend, BOB)
    conversation = alice.conversations.create(items=[{"type": "message", "role": "user", "content": "Hi"}])
    item = alice.conversations.items.list(conversation.id).data[0]
    for attempt in (
        lambda: bob.conversations.retrieve(conversation.id),
        lambda: bob.conversations.update(conversation.id, metadata={"x": "y"}),
        lambda: bob.conversations.items.list(conversation.id),
        lambda: bob.conversations.items.create(conversation.id, items=[{"role": "user", "content": "Mine"}]),
        lambda: bob.conversations.items.retrieve(item.id, conversation_id=conversation.id),
        lambda: bob.conversations.items.delete(item.id, conversation_id=conversation.id),
        lambda: bob.conversations.delete(conversation.id),
    ):
        with pytest.raises(openai.NotFoundError, match=conversation.id):
            attempt()
    with pytest.raises(openai.BadRequestError, match="was not found"):
        bob.responses.create(model=MODEL_NAME, input="More", conversation=conversation.id, max_output_tokens=2)
    # Bob's attempts changed nothing.
    assert [found.id for found in alice.conversations.items.list(conversation.id)] == [item.id]
    assert alice.conversations.retrieve(conversation.id).metadata == {}


def cached_tokens(client: openai.OpenAI, prompt: str) -> int:
    completion = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=1, temperature=0)
    assert completion.usage is not None and completion.usage.prompt_tokens_details is not None
    return completion.usage.prompt_tokens_details.cached_tokens or 0


def test_prefix_cache_hits_stay_within_one_key(tenant_frontend: FrontendServer) -> None:
    alice, bob = sdk(tenant_frontend, ALICE), sdk(tenant_frontend, BOB)
    # Unique text, several KV blocks long, that no other test has put in the cache.
    prompt = " ".join(f"word{uuid.uuid4().hex[:6]}" for _ in range(40))
    assert cached_tokens(alice, prompt) == 0
    assert cached_tokens(alice, prompt) >= 16
    assert cached_tokens(bob, prompt) == 0, "another key must not hit Alice's blocks"
    assert cached_tokens(bob, prompt) >= 16


def test_cors_allows_only_the_configured_origin(tenant_frontend: FrontendServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    url = f"{tenant_frontend.base_url}/chat/completions"
    allowed = httpx.options(url, headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.options(url, headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    models = httpx.get(
        f"{tenant_frontend.base_url}/models", headers={"Origin": ORIGIN, "Authorization": f"Bearer {ALICE}"}
    )
    assert models.status_code == 200 and models.headers["access-control-allow-origin"] == ORIGIN


def test_cors_is_off_by_default(frontend_server: FrontendServer) -> None:
    headers = {"Origin": ORIGIN, "Authorization": f"Bearer {frontend_server.api_key}"}
    models = httpx.get(f"{frontend_server.base_url}/models", headers=headers)
    assert models.status_code == 200 and "access-control-allow-origin" not in models.headers
    preflight = httpx.options(
        f"{frontend_server.base_url}/chat/completions",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers
