"""The checked-in model repository is exactly the rendering of the cpu-default profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ensemble_configs.render import load_profile, render_configs, render_repository, render_variant

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "ensemble_configs" / "profiles"


def test_checked_in_repository_matches_cpu_default_profile() -> None:
    rendered = render_configs(load_profile(PROFILES / "cpu-default.yaml"))
    assert set(rendered) == {"preprocess", "llm", "postprocess", "ensemble", "whisper"}
    for model, text in rendered.items():
        checked_in = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
        assert checked_in == text, f"model_repository/{model}/config.pbtxt differs: run `make render`"


@pytest.mark.parametrize("profile", sorted(p.name for p in PROFILES.glob("*.yaml")))
def test_every_profile_renders_a_complete_repository(profile: str, tmp_path: Path) -> None:
    render_repository(PROFILES / profile, tmp_path)
    for model in ("preprocess", "llm", "postprocess", "whisper"):
        assert (tmp_path / model / "1" / "model.py").exists()
        assert "${" not in (tmp_path / model / "config.pbtxt").read_text()
    assert (tmp_path / "ensemble" / "config.pbtxt").exists()


def test_missing_variable_is_an_error(tmp_path: Path) -> None:
    profile = tmp_path / "broken.yaml"
    profile.write_text("model: somewhere\n")
    with pytest.raises(KeyError):
        render_configs(load_profile(profile))


def test_a_json_value_survives_the_protobuf_text_string() -> None:
    """speculative_config and lora_modules are JSON: their quotes are escaped in config.pbtxt and read back as written."""
    profile = load_profile(PROFILES / "cpu-default.yaml")
    value = '{"method": "ngram", "num_speculative_tokens": 4, "note": "a \\\\ b"}'
    profile["speculative_config"] = value
    config = text_format.Parse(render_configs(profile)["llm"], model_config_pb2.ModelConfig())
    assert config.parameters["speculative_config"].string_value == value
    adapters = '{"sql": "/adapters/sql-lora", "chat": "adapters/chat"}'
    profile["lora_modules"] = adapters
    config = text_format.Parse(render_configs(profile)["llm"], model_config_pb2.ModelConfig())
    assert config.parameters["lora_modules"].string_value == adapters


def test_a_variant_rendered_elsewhere_finds_the_projects_checkpoints(tmp_path: Path) -> None:
    repository = render_variant(PROFILES / "cpu-default.yaml", {"max_num_seqs": 2}, tmp_path, "small")
    assert repository == tmp_path / "model_repository-small"
    config = text_format.Parse((repository / "llm" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.parameters["model"].string_value == str(ROOT / "models" / "SmolLM2-135M-Instruct")
    assert config.parameters["max_num_seqs"].string_value == "2"
    # Absolute paths (the Qwen3 profile's /models/...) stay as written.
    qwen = render_variant(PROFILES / "qwen3-14b-tp2.yaml", {}, tmp_path, "qwen")
    assert '"/models/Qwen3-14B"' in (qwen / "llm" / "config.pbtxt").read_text()
