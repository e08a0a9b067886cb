"""Fixtures of the frontend tests: the real tokenizer, and the app in-process over a Triton that is not there
(routes that never reach Triton are fully exercised; the others must answer 503)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from frontend.app import build_app
from frontend.config import FrontendConfig
from frontend.metrics import FrontendMetrics
from frontend.serving.context import ServingContext, unix_now
from frontend.templating import ChatTemplater
from frontend.triton_client import TritonClient
from tests.servers import TritonServer, free_port, start_frontend

MODEL_NAME = "SmolLM2-135M-Instruct"
# Frontend flags of tool-call and reasoning parsing (hermes tool calls, qwen3 <think> reasoning).
PARSING_ARGS = ("--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3")
API_KEY = "unit-key"


@pytest.fixture(scope="session")
def templater(model_path: Path) -> ChatTemplater:
    return ChatTemplater(model_path)


@pytest.fixture(scope="session")
def framing_templater(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> ChatTemplater:
    """SmolLM2's tokenizer made to add special tokens around any text, as Llama's adds a BOS (SmolLM2's adds
    none): <|im_start|> before and <|endoftext|> after."""
    directory = tmp_path_factory.mktemp("framing-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "chat_template.jinja"):
        shutil.copy(model_path / name, directory / name)
    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    special = {"<|im_start|>": 1, "<|endoftext|>": 0}
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {token: {"id": token, "ids": [i], "tokens": [token]} for token, i in special.items()},
    }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    return ChatTemplater(directory)


def offline_config(model_path: Path, **overrides: object) -> FrontendConfig:
    settings: dict = {
        "model": model_path,
        "served_model_names": (MODEL_NAME,),
        # Ports nobody listens on: Triton is unreachable.
        "triton_url": f"127.0.0.1:{free_port()}",
        "triton_metrics_url": f"http://127.0.0.1:{free_port()}/metrics",
        "api_keys": (API_KEY,),
        "max_request_body_bytes": 4096,
        "triton_timeout_s": 1.0,
    }
    settings.update(overrides)
    return FrontendConfig(**settings)


def offline_serving_context(config: FrontendConfig, templater: ChatTemplater) -> ServingContext:
    """The frontend's serving context over `config`'s (unreachable) Triton."""
    return ServingContext(
        config=config,
        triton=TritonClient(config.triton_url, config.triton_model),
        templater=templater,
        metrics=FrontendMetrics(),
        started=unix_now(),
    )


@pytest.fixture(scope="session")
def offline_context(model_path: Path, templater: ChatTemplater) -> ServingContext:
    return offline_serving_context(offline_config(model_path), templater)


@pytest.fixture(scope="session")
def offline_client(offline_context: ServingContext) -> Iterator[TestClient]:
    with TestClient(build_app(offline_context), headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        yield client


@pytest.fixture(scope="module")
def parsing_frontend_url(
    model_path: Path, triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A second real frontend on the session's Triton with tool and reasoning parsing on (no API key)."""
    log_dir = tmp_path_factory.mktemp("frontend-parsing")
    frontend = start_frontend(model_path, triton_server, log_dir, api_key=None, extra_args=PARSING_ARGS)
    try:
        yield frontend.base_url
    finally:
        frontend.process.stop()
