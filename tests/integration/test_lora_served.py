"""LoRA adapters configured as README.md says (a profile's `lora_modules`, rendered into the llm model's
parameters) and served by a stack of their own, tritonserver and frontend: /v1/models lists them, a request
names one as its `model` through the OpenAI SDK or as `lora_name` over Triton, unknown names are refused
and the server goes on serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from openai.types import Completion

from tests.frontend.conftest import MODEL_NAME
from tests.integration.triton_requests import generate, stream_outputs
from tests.lora_adapter import write_random_adapter
from tests.servers import FrontendServer, TritonServer, profile_stack

pytestmark = pytest.mark.slow

ADAPTERS = {"sql": 1, "chat": 2}  # name -> the seed of its random weights
# Over three full KV blocks, so that a request with another adapter (or none) could find the earlier ones'
# prompt blocks in the prefix cache: it must not use them.
PROMPT = (
    "Here is a short story about a lighthouse keeper who lived alone on a rocky island far from the coast, "
    "and the strange ship that appeared one night in a storm. The story begins"
)
MAX_TOKENS = 12
# The greedy answers' settings as Triton tensors.
GREEDY = {"temperature": 0.0, "max_tokens": MAX_TOKENS}
# Every answer MAX_TOKENS long (an early EOS would make texts harder to tell apart); the token ids come back.
EXTRA = {"ignore_eos": True, "return_token_ids": True}


@dataclass
class LoraStack:
    triton: TritonServer
    frontend: FrontendServer
    # Adapter name -> its directory, as lora_modules names it.
    adapters: dict[str, Path]


@pytest.fixture(scope="module")
def stack(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoraStack]:
    folder = tmp_path_factory.mktemp("lora")
    adapters = {name: write_random_adapter(model_path, folder / name, seed=seed) for name, seed in ADAPTERS.items()}
    overrides = {
        "kv_cache_memory": 64 << 20,
        "lora_modules": json.dumps({name: str(path) for name, path in adapters.items()}),
    }
    with profile_stack(model_path, overrides, folder, "lora") as (triton, frontend):
        yield LoraStack(triton, frontend, adapters)


@pytest.fixture(scope="module")
def client(stack: LoraStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.frontend.base_url, api_key="none", max_retries=0)


def complete(client: openai.OpenAI, model: str, **extra: object) -> Completion:
    return client.completions.create(
        model=model, prompt=PROMPT, temperature=0, max_tokens=MAX_TOKENS, extra_body={**EXTRA, **extra}
    )


def test_models_lists_the_adapters_after_the_base_model(client: openai.OpenAI, stack: LoraStack) -> None:
    models = list(client.models.list())
    assert [model.id for model in models[:3]] == [MODEL_NAME, "sql", "chat"]
    base, *adapters = models[:3]
    for card in adapters:
        assert card.model_extra is not None and card.model_extra["parent"] == MODEL_NAME
        assert card.model_extra["root"] == str(stack.adapters[card.id])
        assert card.model_extra["max_model_len"] == base.model_extra["max_model_len"] == 8192  # type: ignore[index]
    assert client.models.retrieve("chat").model_extra["parent"] == MODEL_NAME  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_each_adapter_answers_its_own_way_and_the_same_each_time(client: openai.OpenAI, stack: LoraStack) -> None:
    # The adapter first, on a prompt nothing has cached; its second answer follows the base model's, whose
    # prompt blocks it must not take for its own.
    sql = complete(client, "sql")
    base = complete(client, MODEL_NAME)
    chat = complete(client, "chat")
    again = complete(client, "sql")
    texts = [answer.choices[0].text for answer in (base, sql, chat)]
    assert len(set(texts)) == 3, texts
    assert again.choices[0].text == sql.choices[0].text
    assert (base.model, sql.model, chat.model) == (MODEL_NAME, "sql", "chat")
    assert all(answer.usage is not None and answer.usage.completion_tokens == MAX_TOKENS for answer in (base, sql))

    # Over Triton, the same tokens: vllm_backend's sampling_parameters key on the llm model, and the
    # lora_name tensor on the ensemble.
    prompt_ids = sql.choices[0].model_extra["prompt_token_ids"]  # type: ignore[index]
    sampling = {"lora_name": "sql", "temperature": 0, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    outputs = stream_outputs(stack.triton.grpc_url, {"input_ids": prompt_ids, "sampling_parameters": sampling}, "llm")
    native = [int(token) for output in outputs for token in output["output_token_ids"]]
    assert native == sql.choices[0].model_extra["token_ids"]  # type: ignore[index]
    request = {"text_input": PROMPT, "prompt_token_ids": prompt_ids, "lora_name": "chat", **GREEDY, "ignore_eos": True}
    through_ensemble = generate(stack.triton.grpc_url, request)
    assert through_ensemble.error is None, through_ensemble.error
    assert through_ensemble.token_ids == chat.choices[0].model_extra["token_ids"]  # type: ignore[index]

    # A beam search sends each step to the engine with the adapter: one beam is the greedy answer.
    beam = complete(client, "sql", use_beam_search=True)
    assert beam.choices[0].text == sql.choices[0].text and beam.model == "sql"


def test_an_adapter_embeds_its_own_way(client: openai.OpenAI) -> None:
    """LoRA adapters apply to embeddings too (model=<adapter>), and the answer names the adapter."""

    def embed(model: str) -> np.ndarray:
        reply = client.embeddings.create(model=model, input=PROMPT, encoding_format="float")
        assert reply.model == model
        return np.asarray(reply.data[0].embedding)

    sql, base, chat, again = embed("sql"), embed(MODEL_NAME), embed("chat"), embed("sql")
    assert min(np.abs(sql - base).max(), np.abs(chat - base).max(), np.abs(sql - chat).max()) > 1e-3
    assert np.abs(again - sql).max() < 1e-5


def test_an_adapter_scores_with_its_own_embeddings(client: openai.OpenAI, stack: LoraStack) -> None:
    """/v1/score with model=<adapter>: the cosine similarity of that adapter's embeddings, named by it."""
    texts = [PROMPT, "A lighthouse keeper alone on an island."]

    def similarities(model: str) -> tuple[float, float]:
        reply = client.embeddings.create(model=model, input=texts, encoding_format="float")
        first, second = (np.asarray(item.embedding) for item in reply.data)
        expected = float(first @ second / (np.linalg.norm(first) * np.linalg.norm(second)))
        body = {"model": model, "text_1": texts[0], "text_2": texts[1]}
        scored = httpx.post(f"{stack.frontend.base_url}/score", json=body, timeout=120).json()
        assert scored["model"] == model, scored
        return scored["data"][0]["score"], expected

    sql, base = similarities("sql"), similarities(MODEL_NAME)
    assert abs(sql[0] - sql[1]) < 1e-5 and abs(base[0] - base[1]) < 1e-5
    # The adapter moves the similarity, so a score that ignored it would fail above.
    assert abs(sql[1] - base[1]) > 1e-2


def test_a_streamed_chat_names_its_adapter(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0, stream=True
    )
    chunks = list(stream)
    assert chunks and all(chunk.model == "chat" for chunk in chunks)


def test_unknown_adapters_are_refused_and_serving_goes_on(client: openai.OpenAI, stack: LoraStack) -> None:
    with pytest.raises(openai.NotFoundError):
        complete(client, "nope")
    refused = generate(stack.triton.grpc_url, {"text_input": PROMPT, "sampling_parameters": {"lora_name": "nope"}})
    assert refused.error is not None and "nope" in str(refused.error)
    after = generate(stack.triton.grpc_url, {"text_input": PROMPT, "lora_name": "sql", **GREEDY})
    assert after.error is None and after.num_output_tokens > 0
