"""The model creator's recommended sampling settings, used wherever a request leaves a field unset, as
`vllm serve` uses them (its `--generation-config auto`, the default). Qwen3's generation_config.json, for
one, asks for temperature 0.6, top_p 0.95 and top_k 20, where a bare request would otherwise sample at
temperature 1 from the whole vocabulary; a user moving from vLLM gets the same answers here."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

# The generation_config.json fields that become request defaults (vLLM's list); its max_new_tokens is the
# default max_tokens.
SAMPLING_FIELDS = (
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
)


# What each field accepts (the API's own bounds, frontend/protocol/sampling.py), and which must be whole:
# a value out of bounds would fail every request that leaves the field unset, naming a field it never sent.
_ACCEPTS: dict[str, tuple[Callable[[float], bool], str]] = {
    "repetition_penalty": (lambda value: value > 0, "> 0"),
    "presence_penalty": (lambda value: -2 <= value <= 2, "in [-2, 2]"),
    "frequency_penalty": (lambda value: -2 <= value <= 2, "in [-2, 2]"),
    "temperature": (lambda value: value >= 0, ">= 0"),
    "top_k": (lambda value: value >= -1, ">= -1"),
    "top_p": (lambda value: 0 < value <= 1, "in (0, 1]"),
    "min_p": (lambda value: 0 <= value <= 1, "in [0, 1]"),
    "max_new_tokens": (lambda value: value >= 1, ">= 1"),
}
_WHOLE = ("top_k", "max_new_tokens")


class GenerationConfigError(ValueError):
    """The generation config named on the command line cannot be used."""


def generation_defaults(model: Path, source: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The request defaults from `source`: "auto" (the model directory's generation_config.json, if it has
    one), "vllm" (none: the API's own defaults), or a directory holding a generation_config.json; then
    `overrides` (--override-generation-config) on top. Only the SAMPLING_FIELDS and max_new_tokens (returned
    as max_tokens) set to a number count."""
    config: dict[str, Any] = {}
    if source != "vllm":
        path = (model if source == "auto" else Path(source)) / "generation_config.json"
        if path.is_file():
            try:
                config = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise GenerationConfigError(f"{path} is not JSON: {error}") from None
        elif source != "auto":
            raise GenerationConfigError(f"{path} does not exist")
    config.update(overrides)
    defaults = {}
    for name in (*SAMPLING_FIELDS, "max_new_tokens"):
        value = config.get(name)
        if value is None:
            continue
        accepts, bounds = _ACCEPTS[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not accepts(value):
            raise GenerationConfigError(f"generation config field {name} must be a number {bounds}, got {value!r}")
        if name in _WHOLE:
            if value != int(value):
                raise GenerationConfigError(f"generation config field {name} must be a whole number, got {value!r}")
            value = int(value)
        defaults["max_tokens" if name == "max_new_tokens" else name] = value
    return defaults


def max_tokens_cap(source: str, defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> int | None:
    """The bound vLLM puts on every request's max_tokens, one it sent included: the max_new_tokens of a
    generation config directory named on the command line, or of --override-generation-config. The model's
    own generation_config.json (source "auto") only sets the default a request may exceed."""
    if source in ("auto", "vllm") and overrides.get("max_new_tokens") is None:
        return None
    return defaults.get("max_tokens")
