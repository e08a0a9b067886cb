"""LoRA adapters loaded at run time (vLLM's /v1/load_lora_adapter) on a stack of their own: a profile with
`allow_runtime_lora_updating` and two llm instances (data parallel). A loaded adapter is listed and served
as a request's `model` by both instances, token for token what the engine gives with the adapter
configured; `load_inplace` swaps its directory, unloading makes its name unknown again; a directory that
holds no adapter is refused and nothing is listed. The shared stack, without runtime updating, has no such
routes (404)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.frontend.conftest import MODEL_NAME
from tests.lora_adapter import write_random_adapter
from tests.servers import FrontendServer, TritonServer, profile_stack

pytestmark = pytest.mark.slow

PROMPT = "The lighthouse keeper looked at the sea and said"
MAX_TOKENS = 10


@dataclass
class RuntimeStack:
    triton: TritonServer
    frontend: FrontendServer
    # Adapter directories by the seed of their random weights.
    adapters: dict[int, Path]


@pytest.fixture(scope="module")
def stack(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeStack]:
    folder = tmp_path_factory.mktemp("lora-runtime")
    adapters = {
        seed: write_random_adapter(model_path, folder / f"adapter-{seed}", seed=seed) for seed in (1, 2)
    }
    overrides = {
        "kv_cache_memory": 64 << 20,
        "allow_runtime_lora_updating": True,
        "max_loras": 2,
        "llm_instances": 2,
    }
    with profile_stack(model_path, overrides, folder, "lora-runtime") as (triton, frontend):
        yield RuntimeStack(triton, frontend, adapters)


@pytest.fixture(scope="module")
def expected(model_path: Path, stack: RuntimeStack) -> dict[int | None, list[int]]:
    """Greedy tokens of the prompt by adapter seed (None: the base model), from the engine in-process with
    the adapters configured."""
    engine = LLMEngine(
        EngineConfig(
            model=str(model_path),
            device="cpu",
            dtype="float32",
            max_model_len=512,
            kv_cache_memory=16 << 20,
            lora_modules={str(seed): str(path) for seed, path in stack.adapters.items()},
        )
    )
    prompt = engine.tokenizer.encode(PROMPT)
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    results: dict[int | None, list[int]] = {}
    for seed in (None, *stack.adapters):
        [result] = engine.generate([prompt], params, lora_name=None if seed is None else str(seed))
        results[seed] = result.token_ids
    assert len({tuple(tokens) for tokens in results.values()}) == 3
    return results


def post(frontend: FrontendServer, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{frontend.base_url}{path}", json=body, timeout=60)


def served_tokens(frontend: FrontendServer, model: str, count: int) -> list[list[int]]:
    """The answers to `count` concurrent requests for `model` (two instances share them)."""

    async def run() -> list[list[int]]:
        client = openai.AsyncOpenAI(base_url=frontend.base_url, api_key="none", max_retries=0)
        answers = await asyncio.gather(
            *(
                client.completions.create(
                    model=model,
                    prompt=PROMPT,
                    temperature=0,
                    max_tokens=MAX_TOKENS,
                    extra_body={"ignore_eos": True, "return_token_ids": True},
                )
                for _ in range(count)
            )
        )
        return [answer.choices[0].model_extra["token_ids"] for answer in answers]  # type: ignore[index]

    return asyncio.run(run())


def test_load_serve_swap_and_unload(stack: RuntimeStack, expected: dict[int | None, list[int]]) -> None:
    frontend = stack.frontend
    client = openai.OpenAI(base_url=frontend.base_url, api_key="none", max_retries=0)
    assert [model.id for model in client.models.list()][:2] != [MODEL_NAME, "sql"]

    loaded = post(frontend, "/load_lora_adapter", {"lora_name": "sql", "lora_path": str(stack.adapters[1])})
    assert loaded.status_code == 200 and loaded.text == "Success: LoRA adapter 'sql' added successfully."
    card = client.models.retrieve("sql").model_extra
    assert card is not None and (card["parent"], card["root"]) == (MODEL_NAME, str(stack.adapters[1]))
    assert served_tokens(frontend, "sql", 6) == [expected[1]] * 6
    assert served_tokens(frontend, MODEL_NAME, 2) == [expected[None]] * 2

    again = post(frontend, "/load_lora_adapter", {"lora_name": "sql", "lora_path": str(stack.adapters[2])})
    assert again.status_code == 400 and "already been loaded" in again.json()["error"]["message"]
    swapped = post(
        frontend,
        "/load_lora_adapter",
        {"lora_name": "sql", "lora_path": str(stack.adapters[2]), "load_inplace": True},
    )
    assert swapped.status_code == 200, swapped.text
    assert served_tokens(frontend, "sql", 6) == [expected[2]] * 6

    unloaded = post(frontend, "/unload_lora_adapter", {"lora_name": "sql"})
    assert (
        unloaded.status_code == 200 and unloaded.text == "Success: LoRA adapter 'sql' removed successfully."
    )
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="sql", prompt=PROMPT, max_tokens=2)
    assert "sql" not in [model.id for model in client.models.list()]
    assert post(frontend, "/unload_lora_adapter", {"lora_name": "sql"}).status_code == 404


def test_an_adapter_rewritten_in_place_is_read_afresh(
    stack: RuntimeStack, expected: dict[int | None, list[int]], tmp_path: Path
) -> None:
    # A training loop writes each new adapter over the last and loads it again in place (vLLM re-reads it).
    directory = tmp_path / "trained"
    shutil.copytree(stack.adapters[1], directory)
    body = {"lora_name": "trained", "lora_path": str(directory)}
    assert post(stack.frontend, "/load_lora_adapter", body).status_code == 200
    assert served_tokens(stack.frontend, "trained", 2) == [expected[1]] * 2
    shutil.rmtree(directory)
    shutil.copytree(stack.adapters[2], directory)
    assert post(stack.frontend, "/load_lora_adapter", {**body, "load_inplace": True}).status_code == 200
    assert served_tokens(stack.frontend, "trained", 4) == [expected[2]] * 4
    assert post(stack.frontend, "/unload_lora_adapter", {"lora_name": "trained"}).status_code == 200


def test_refusals(stack: RuntimeStack, tmp_path: Path) -> None:
    frontend = stack.frontend
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    refused = post(frontend, "/load_lora_adapter", {"lora_name": "broken", "lora_path": str(empty)})
    assert refused.status_code == 400 and "adapter_config.json" in refused.json()["error"]["message"]
    assert "broken" not in [card["id"] for card in httpx.get(f"{frontend.base_url}/models").json()["data"]]
    taken = post(
        frontend, "/load_lora_adapter", {"lora_name": MODEL_NAME, "lora_path": str(stack.adapters[1])}
    )
    assert taken.status_code == 400 and taken.json()["error"]["param"] == "lora_name"
    missing_field = post(frontend, "/load_lora_adapter", {"lora_name": "x"})
    assert missing_field.status_code == 400 and missing_field.json()["error"]["param"] == "lora_path"
    # The stack goes on serving.
    assert httpx.get(f"{frontend.root_url}/health").status_code == 200


def test_without_runtime_updating_there_is_nothing_to_load(
    frontend_server: FrontendServer, tmp_path: Path
) -> None:
    reply = httpx.post(
        f"{frontend_server.base_url}/load_lora_adapter",
        json={"lora_name": "sql", "lora_path": str(tmp_path)},
        headers={"Authorization": f"Bearer {frontend_server.api_key}"},
    )
    assert reply.status_code == 404 and "allow_runtime_lora_updating" in reply.json()["error"]["message"]
