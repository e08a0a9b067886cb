"""Structured-output parameters of an llm request -> the engine's StructuredOutputsParams.

Three spellings arrive and mean the same thing:
  * vLLM's `structured_outputs` object in `sampling_parameters` ({"json": ...}, {"regex": ...},
    {"choice": [...]}, {"grammar": ...}, {"json_object": true}, {"structural_tag": ...});
  * vLLM's older `guided_json` / `guided_regex` / `guided_choice` / `guided_grammar` keys there;
  * TensorRT-LLM's tensors `guided_decoding_guide_type` (json, json_schema, regex, ebnf_grammar,
    structural_tag) and `guided_decoding_guide`.
At most one constraint may be given; the engine validates the constraint itself when it is queued.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from engine.structured_output import StructuredOutputsParams

# Legacy sampling_parameters key -> StructuredOutputsParams field.
LEGACY_KEYS: dict[str, str] = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
}
# Every sampling_parameters key this module reads.
JSON_KEYS = ("structured_outputs", *LEGACY_KEYS)
# TensorRT-LLM guide types -> StructuredOutputsParams field (`json` takes no guide: any JSON object).
GUIDE_TYPES: dict[str, str] = {
    "json": "json_object",
    "json_schema": "json",
    "regex": "regex",
    "ebnf_grammar": "grammar",
    "structural_tag": "structural_tag",
}
GUIDE_TENSORS = ("guided_decoding_guide_type", "guided_decoding_guide")
# StructuredOutputsParams fields a `structured_outputs` object may set (vLLM's names).
_FIELDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag", "disable_any_whitespace")
# vLLM options that only pick a backend or its fallback: xgrammar is the only backend here.
_BACKEND_OPTIONS = ("backend", "disable_fallback", "_backend")


def structured_outputs_from_json(parameters: Mapping[str, Any]) -> StructuredOutputsParams | None:
    """The constraint in a `sampling_parameters` object, or None when it has none."""
    given = [key for key in JSON_KEYS if parameters.get(key) not in (None, False, "", [], {})]
    if not given:
        return None
    if len(given) > 1:
        raise ValueError(f"parameters {', '.join(repr(key) for key in given)} conflict: give one constraint")
    key = given[0]
    value = parameters[key]
    if key in LEGACY_KEYS:
        return _build(key, {LEGACY_KEYS[key]: value})
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError("parameter 'structured_outputs' must be a JSON object") from None
    if not isinstance(value, dict):
        raise ValueError("parameter 'structured_outputs' must be a JSON object")
    unknown = sorted(set(value) - set(_FIELDS) - set(_BACKEND_OPTIONS))
    if unknown:
        raise ValueError(f"parameter 'structured_outputs' has unsupported fields: {', '.join(unknown)}")
    return _build(key, {name: value[name] for name in _FIELDS if name in value})


def structured_outputs_from_tensors(inputs: Mapping[str, np.ndarray]) -> StructuredOutputsParams | None:
    """The constraint in TensorRT-LLM's guided-decoding tensors, or None when they are absent or empty."""
    guide_type = _text(inputs.get("guided_decoding_guide_type"))
    guide = _text(inputs.get("guided_decoding_guide"))
    if not guide_type:
        if guide:
            raise ValueError("parameter 'guided_decoding_guide' needs 'guided_decoding_guide_type'")
        return None
    kind = GUIDE_TYPES.get(guide_type.lower())
    if kind is None:
        raise ValueError(
            f"parameter 'guided_decoding_guide_type' must be one of {', '.join(GUIDE_TYPES)}, got {guide_type!r}"
        )
    if kind == "json_object":
        return _build("guided_decoding_guide_type", {"json_object": True})
    if not guide:
        raise ValueError(f"parameter 'guided_decoding_guide' is required for guide type {guide_type!r}")
    return _build("guided_decoding_guide", {kind: guide})


def _build(parameter: str, fields: dict[str, Any]) -> StructuredOutputsParams:
    try:
        return StructuredOutputsParams(**fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"parameter '{parameter}': {error}") from None


def _text(array: np.ndarray | None) -> str:
    if array is None or array.size == 0:
        return ""
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)
