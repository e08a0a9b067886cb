"""Reading a Triton model's `parameters { key: ... value { string_value: ... } }` block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def parse_model_parameters(model_config_json: str) -> dict[str, str]:
    """The string values of a model config's `parameters`, keyed by name."""
    config = json.loads(model_config_json)
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


def resolve_model_path(value: str, model_repository: str) -> str:
    """A checkpoint path from a config parameter.

    Absolute paths are taken as is; relative ones resolve against the directory that holds the model
    repository, so the checked-in repository finds `models/...` of the project it sits in.
    Triton passes `model_repository` as the model's own folder (``<repo>/<model>``).
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    return str((Path(model_repository).resolve().parent.parent / path).resolve())


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean parameter value, got {value!r}")


def optional_int(parameters: dict[str, Any], key: str) -> int | None:
    value = parameters.get(key, "")
    return int(value) if str(value).strip() else None
