from __future__ import annotations

import json
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


def test_triton_metrics_url_defaults_to_the_grpc_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_METRICS_URL", raising=False)
    assert config_from_args(["--model", "m"]).triton_metrics_url == "http://127.0.0.1:8002/metrics"
    remote = config_from_args(["--model", "m", "--triton-url", "triton:9001"])
    assert remote.triton_metrics_url == "http://triton:8002/metrics"
    ipv6 = config_from_args(["--model", "m", "--triton-url", "[fd00::1]:8001"])
    assert ipv6.triton_metrics_url == "http://[fd00::1]:8002/metrics"
    flagged = config_from_args(["--model", "m", "--triton-metrics-url", "http://metrics.example:9102/metrics"])
    assert flagged.triton_metrics_url == "http://metrics.example:9102/metrics"
    monkeypatch.setenv("TRITON_METRICS_URL", "http://10.0.0.2:18002/metrics")
    assert config_from_args(["--model", "m"]).triton_metrics_url == "http://10.0.0.2:18002/metrics"


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


def write_generation_config(directory: Path, **fields: object) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, **fields}))
    return directory


def test_sampling_defaults_come_from_the_models_generation_config(tmp_path: Path) -> None:
    model = write_generation_config(
        tmp_path / "model", do_sample=True, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=512, min_p=None
    )
    # vLLM's `--generation-config auto`: the model's file; only sampling fields set to a number count.
    assert config_from_args(["--model", str(model)]).sampling_defaults == {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "max_tokens": 512,
    }
    assert config_from_args(["--model", str(model), "--generation-config", "vllm"]).sampling_defaults == {}
    other = write_generation_config(tmp_path / "other", repetition_penalty=1.1)
    chosen = config_from_args(["--model", str(model), "--generation-config", str(other)])
    assert chosen.sampling_defaults == {"repetition_penalty": 1.1}
    overridden = config_from_args(
        ["--model", str(model), "--override-generation-config", '{"temperature": 0.2, "max_new_tokens": null}']
    )
    assert overridden.sampling_defaults == {"temperature": 0.2, "top_p": 0.95, "top_k": 20}
    # A model without the file has no defaults; overrides still apply, even over "vllm".
    assert config_from_args(["--model", str(tmp_path / "bare")]).sampling_defaults == {}
    plain = ["--model", str(tmp_path / "bare"), "--generation-config", "vllm", "--override-generation-config"]
    assert config_from_args([*plain, '{"top_k": 5.0}']).sampling_defaults == {"top_k": 5}


def test_max_new_tokens_caps_requests_only_where_vllm_caps_them(tmp_path: Path) -> None:
    model = write_generation_config(tmp_path / "model", max_new_tokens=512)
    # The model's own file sets a default a request may exceed; a directory named on the command line, or
    # --override-generation-config, sets a bound on every request (vLLM's override_max_tokens).
    assert config_from_args(["--model", str(model)]).max_tokens_cap is None
    assert config_from_args(["--model", str(model), "--generation-config", str(model)]).max_tokens_cap == 512
    for source in ("auto", "vllm"):
        flags = ["--generation-config", source, "--override-generation-config", '{"max_new_tokens": 64}']
        assert config_from_args(["--model", str(model), *flags]).max_tokens_cap == 64
    other = write_generation_config(tmp_path / "other", temperature=0.5)
    assert config_from_args(["--model", str(model), "--generation-config", str(other)]).max_tokens_cap is None


@pytest.mark.parametrize(
    "flags",
    [
        ["--generation-config", "/nowhere"],
        ["--override-generation-config", "[1]"],
        ["--override-generation-config", "{not json"],
        ["--override-generation-config", '{"temperature": "hot"}'],
        ["--override-generation-config", '{"top_p": 0}'],
        ["--override-generation-config", '{"top_k": 20.5}'],
        ["--override-generation-config", '{"max_new_tokens": 0}'],
    ],
)
def test_unusable_generation_configs_stop_the_start(tmp_path: Path, flags: list[str]) -> None:
    with pytest.raises(SystemExit):
        config_from_args(["--model", str(tmp_path), *flags])


def test_files_dir_flag_and_its_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRITONLLM_FILES_DIR", str(tmp_path / "from-env"))
    assert config_from_args(["--model", "m"]).files_dir == tmp_path / "from-env"
    monkeypatch.delenv("TRITONLLM_FILES_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    default = config_from_args(["--model", "m"])
    assert default.files_dir == tmp_path / "state" / "tritonllm" / "files"
    assert default.max_upload_bytes == 512 * 1024 * 1024
    chosen = config_from_args(["--model", "m", "--files-dir", "/srv/files", "--max-upload-bytes", "1000"])
    assert (chosen.files_dir, chosen.max_upload_bytes) == (Path("/srv/files"), 1000)
