"""LoRA adapters as the frontend learns them from the llm model's `lora_modules` parameter: the model list,
requests naming an adapter, and what happens while Triton cannot say. Triton's answer is the llm config that
the cpu-default profile renders with two adapters (tests/integration/test_lora_served.py serves them)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from google.protobuf import text_format
from tritonclient.grpc import InferInput, model_config_pb2

from ensemble_configs.render import load_profile, render_configs
from frontend.app import build_app
from frontend.errors import APIError
from frontend.protocol.chat import ChatCompletionRequest
from frontend.serving.chat import ChatHandler
from frontend.serving.context import ServedModel, ServingContext, engine_lora_modules
from frontend.templating import ChatTemplater
from frontend.triton_client import GenerationInput, TritonClient, build_inputs
from tests.frontend.conftest import API_KEY, MODEL_NAME, offline_config, offline_serving_context
from tests.frontend.test_app import CHAT, assert_error
from tests.servers import ROOT

LORA_MODULES = '{"sql": "/adapters/sql-lora", "chat": "adapters/chat"}'


def rendered_parameters(lora_modules: str) -> dict[str, str]:
    """The llm model's parameters as Triton's get_model_config reports them for the cpu-default profile."""
    profile = load_profile(ROOT / "ensemble_configs" / "profiles" / "cpu-default.yaml")
    profile["lora_modules"] = lora_modules
    config = text_format.Parse(render_configs(profile)["llm"], model_config_pb2.ModelConfig())
    return {name: value.string_value for name, value in config.parameters.items()}


class ConfigOnlyTriton(TritonClient):
    """A Triton whose llm config answers (with `parameters`, once `up`) and whose models do not: every
    generation is a 503, as with no server at all."""

    def __init__(self, url: str, parameters: dict[str, str]) -> None:
        super().__init__(url)
        self.parameters = parameters
        self.up = True
        # get_model_config calls made.
        self.asked = 0

    async def model_parameters(self, timeout: float) -> dict[str, str] | None:
        self.asked += 1
        return self.parameters if self.up else None


def adapter_context(model_path: Path, templater: ChatTemplater) -> tuple[ServingContext, ConfigOnlyTriton]:
    config = offline_config(model_path)
    triton = ConfigOnlyTriton(config.triton_url, rendered_parameters(LORA_MODULES))
    return dataclasses.replace(offline_serving_context(config, templater), triton=triton), triton


@pytest.fixture()
def served(model_path: Path, templater: ChatTemplater) -> Iterator[tuple[TestClient, ConfigOnlyTriton]]:
    context, triton = adapter_context(model_path, templater)
    with TestClient(build_app(context), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client, triton


def test_the_lora_modules_parameter_is_read_as_the_engine_reads_it(caplog: pytest.LogCaptureFixture) -> None:
    modules = engine_lora_modules(rendered_parameters(LORA_MODULES))
    assert modules == {"sql": "/adapters/sql-lora", "chat": "adapters/chat"} and list(modules) == ["sql", "chat"]
    assert engine_lora_modules(rendered_parameters("")) == {}
    # A repository rendered before the parameter existed.
    assert engine_lora_modules({"model": "models/x"}) == {}
    with caplog.at_level(logging.WARNING):
        for bad in ("sql=/adapters/sql", '["/adapters/sql"]', '{"sql": 3}'):
            assert engine_lora_modules({"lora_modules": bad}) == {}
    assert caplog.text.count("is not a JSON object of names and directories") == 3


def test_adapters_are_listed_after_the_base_model_as_vllm_lists_them(
    served: tuple[TestClient, ConfigOnlyTriton],
) -> None:
    client, _ = served
    models = client.get("/v1/models").json()["data"]
    assert [model["id"] for model in models] == [MODEL_NAME, "sql", "chat", "whisper-base", "whisper-1"]
    base, sql, chat = models[:3]
    assert base["parent"] is None and base["max_model_len"] == 8192
    # root: the directory as the llm model configures it (a relative one resolves on Triton's host).
    assert (sql["root"], sql["parent"], sql["max_model_len"]) == ("/adapters/sql-lora", MODEL_NAME, 8192)
    assert (chat["root"], chat["parent"]) == ("adapters/chat", MODEL_NAME)
    assert client.get("/v1/models/sql").json() == sql
    assert_error(client.get("/v1/models/nope"), 404, "model", "model_not_found")


def test_a_request_naming_an_adapter_goes_to_triton_with_it(
    served: tuple[TestClient, ConfigOnlyTriton], model_path: Path, templater: ChatTemplater
) -> None:
    client, _ = served
    # Known: the request reaches for Triton (whose models are not there: 503), where "nope" is a 404.
    assert_error(client.post("/v1/chat/completions", json={**CHAT, "model": "sql"}), 503)
    assert_error(client.post("/v1/completions", json={"model": "chat", "prompt": "x"}), 503)
    assert_error(client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}), 404, "model")
    # An adapter shares the base model's tokenizer.
    for path, body in (("/tokenize", {"prompt": "Hello there"}), ("/detokenize", {"tokens": [19556, 665]})):
        assert client.post(path, json={**body, "model": "sql"}).json() == client.post(path, json=body).json()
    context, _ = adapter_context(model_path, templater)
    handler = ChatHandler(context)
    adapted = asyncio.run(handler._prepare(ChatCompletionRequest.model_validate({**CHAT, "model": "sql"}), "id"))
    assert (adapted.model, adapted.generation.lora_name) == ("sql", "sql")
    base = asyncio.run(handler._prepare(ChatCompletionRequest.model_validate(CHAT), "id"))
    assert (base.model, base.generation.lora_name) == (MODEL_NAME, None)


def test_the_adapter_travels_as_the_lora_name_tensor() -> None:
    def named(request: GenerationInput) -> dict[str, InferInput]:
        return {item.name(): item for item in build_inputs(request)}

    assert "lora_name" not in named(GenerationInput(prompt_token_ids=[1, 2], stream=True))
    tensor = named(GenerationInput(prompt_token_ids=[1, 2], stream=True, lora_name="sql"))["lora_name"]
    assert (tensor.datatype(), tensor.shape()) == ("BYTES", [1])


def test_adapters_are_known_once_triton_answers_and_asked_for_until_then(
    model_path: Path, templater: ChatTemplater
) -> None:
    context, triton = adapter_context(model_path, templater)
    triton.up = False

    async def scenario() -> None:
        # Triton cannot say yet: only the served names are known, and the base ones never need Triton.
        assert await context.resolve_model(None) == ServedModel(MODEL_NAME)
        assert await context.resolve_model(MODEL_NAME) == ServedModel(MODEL_NAME)
        assert triton.asked == 0
        with pytest.raises(APIError, match="does not exist"):
            await context.resolve_model("sql")
        assert await context.lora_modules() == {}
        assert triton.asked == 2
        # Up now: the next request asks again, and the answer is kept.
        triton.up = True
        assert await context.resolve_model("sql") == ServedModel("sql", lora_name="sql")
        with pytest.raises(APIError, match="does not exist"):
            await context.resolve_model("nope")
        assert await context.max_model_len() == 8192
        assert triton.asked == 3

    asyncio.run(scenario())
