"""Engine parameters a request sends as a JSON object in a BYTES input (sampling_parameters,
pooling_parameters): the object read, and the engine's parameter dataclass built from it, with one set of
error messages."""

from __future__ import annotations

import json
from typing import Any, TypeVar

Params = TypeVar("Params")


def json_object(raw: str, input_name: str) -> dict[str, Any]:
    """The object `raw` holds; an empty string is an empty object. ValueError naming the input otherwise."""
    try:
        loaded = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{input_name} is not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{input_name} must be a JSON object")
    return loaded


def build_params(params_class: type[Params], fields: dict[str, Any]) -> Params:
    """params_class(**fields) (SamplingParams, PoolingParams); a refusal names its parameter the way clients
    (and the frontend, which turns it into the OpenAI error's `param`) read it: those classes' messages start
    with the field at fault ("seed must be ...", "dimensions must be >= 1, got 0")."""
    try:
        return params_class(**fields)
    except ValueError as error:
        name = str(error).split(" ", 1)[0]
        if name in getattr(params_class, "__dataclass_fields__", {}):
            raise ValueError(f"parameter '{name}': {error}") from None
        raise
