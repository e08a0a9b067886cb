"""The checked-in model repository is exactly the rendering of the cpu-default profile."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from ensemble_configs.render import load_profile, render_configs, render_repository

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
    """speculative_config is JSON: its quotes are escaped in config.pbtxt and read back as written."""
    profile = load_profile(PROFILES / "cpu-default.yaml")
    value = '{"method": "ngram", "num_speculative_tokens": 4, "note": "a \\\\ b"}'
    profile["speculative_config"] = value
    config = text_format.Parse(render_configs(profile)["llm"], model_config_pb2.ModelConfig())
    assert config.parameters["speculative_config"].string_value == value
