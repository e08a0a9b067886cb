"""A BYTES input that holds a JSON object (sampling_parameters, pooling_parameters), read with one set of
error messages."""

from __future__ import annotations

import json
from typing import Any


def json_object(raw: str, input_name: str) -> dict[str, Any]:
    """The object `raw` holds; an empty string is an empty object. ValueError naming the input otherwise."""
    try:
        loaded = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"{input_name} is not valid JSON: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{input_name} must be a JSON object")
    return loaded
