"""vLLM's add_special_tokens where prompts are tokenized (chat, completions, /tokenize), with a tokenizer
that frames text in special tokens (SmolLM2's own adds none, so the served tests cannot tell)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from frontend.app import build_app
from frontend.protocol.chat import ChatCompletionRequest
from frontend.protocol.completions import CompletionRequest
from frontend.serving.chat import ChatHandler
from frontend.serving.completions import CompletionHandler
from frontend.serving.context import ServingContext
from frontend.templating import ChatTemplater
from tests.frontend.conftest import API_KEY, MODEL_NAME, offline_config, offline_serving_context

BOS, EOS = 1, 0
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def context(model_path: Path, framing_templater: ChatTemplater) -> ServingContext:
    # A context length given: nothing here asks Triton (which is not there).
    return offline_serving_context(offline_config(model_path, max_model_len=512), framing_templater)


@pytest.fixture(scope="module")
def client(context: ServingContext) -> Iterator[TestClient]:
    with TestClient(build_app(context), headers={"Authorization": f"Bearer {API_KEY}"}) as test_client:
        yield test_client


def test_chat_frames_the_templated_prompt_only_when_asked(context: ServingContext) -> None:
    handler = ChatHandler(context)
    request = ChatCompletionRequest.model_validate({"model": MODEL_NAME, "messages": MESSAGES, "return_token_ids": True})
    plain = asyncio.run(handler._prepare(request, "plain")).generation.prompt_token_ids
    framed = asyncio.run(handler._prepare(request.model_copy(update={"add_special_tokens": True}), "framed"))
    # (The template itself opens with <|im_start|>: the frame adds another.)
    assert EOS not in plain
    assert framed.generation.prompt_token_ids == [BOS, *plain, EOS] == framed.kept_prompt_token_ids


def test_completions_text_prompts_with_and_without(context: ServingContext) -> None:
    handler = CompletionHandler(context)
    text = "The three primary colours are"
    plain = context.templater.encode(text, add_special_tokens=False)
    for add, expected in ((True, [BOS, *plain, EOS]), (False, plain)):
        [prompt] = asyncio.run(handler._prompts(CompletionRequest(model=MODEL_NAME, prompt=text, add_special_tokens=add)))
        assert prompt.token_ids == expected
        # Token-id prompts go to the engine as sent.
        [ids] = asyncio.run(handler._prompts(CompletionRequest(model=MODEL_NAME, prompt=[5, 6], add_special_tokens=add)))
        assert ids.token_ids == [5, 6]


def test_tokenize_frames_messages_as_chat_does(client: TestClient, context: ServingContext) -> None:
    plain = client.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    framed = client.post("/tokenize", json={"messages": MESSAGES, "add_special_tokens": True}).json()["tokens"]
    assert framed == [BOS, *plain, EOS]
    prompt = client.post("/tokenize", json={"prompt": "Hi", "add_special_tokens": False}).json()["tokens"]
    assert prompt == context.templater.encode("Hi", add_special_tokens=False)
