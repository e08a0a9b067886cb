from __future__ import annotations

from pathlib import Path

import pytest

from frontend.config import config_from_args


def test_vllm_style_flags_build_one_config() -> None:
    config = config_from_args(
        [
            "--model", "/models/x",
            "--served-model-name", "a", "b",
            "--triton-url", "10.0.0.1:8001",
            "--max-model-len", "4096",
            "--api-key", "k1", "k2",
            "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
            "--reasoning-parser", "qwen3",
        ]
    )  # fmt: skip
    assert config.model == Path("/models/x")
    assert config.served_model_names == ("a", "b") and config.model_name == "a"
    assert config.triton_url == "10.0.0.1:8001" and config.triton_model == "llm"
    assert (config.host, config.port) == ("127.0.0.1", 9000)
    assert config.max_model_len == 4096
    assert config.api_keys == ("k1", "k2")
    assert config.tool_call_parser == "hermes" and config.reasoning_parser == "qwen3"


def test_served_name_defaults_to_the_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    config = config_from_args(["--model", "/models/x"])
    assert config.served_model_names == ("/models/x",) and config.api_keys == ()


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "secret")
    assert config_from_args(["--model", "m"]).api_keys == ("secret",)


def test_auto_tool_choice_needs_a_parser() -> None:
    with pytest.raises(SystemExit):
        config_from_args(["--model", "m", "--enable-auto-tool-choice"])


def test_tenant_and_cors_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    default = config_from_args(["--model", "m"])
    assert not default.isolate_api_keys and default.allowed_origins == ()
    config = config_from_args(
        ["--model", "m", "--api-key", "a", "b", "--isolate-api-keys", "--allowed-origins", "https://x.example"]
    )
    assert config.isolate_api_keys and config.allowed_origins == ("https://x.example",)
    with pytest.raises(SystemExit):  # tenants are keys: isolating nothing is a mistake worth saying
        config_from_args(["--model", "m", "--isolate-api-keys"])
    with pytest.raises(SystemExit):  # browsers refuse credentials for a wildcard origin
        config_from_args(["--model", "m", "--allowed-origins", "*", "--allow-credentials"])
