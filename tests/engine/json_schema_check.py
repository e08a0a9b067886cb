"""A small JSON-schema validator for the test oracles (the `jsonschema` package is not a dependency).

It covers the keywords the structured-output tests use; an unknown validation keyword fails loudly
rather than passing silently.
"""

from __future__ import annotations

import re
from typing import Any

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}
_ANNOTATIONS = {
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "format",
    "$defs",
    "definitions",
}
_CHECKED = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "enum",
    "const",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "minProperties",
    "maxProperties",
}


def _is_type(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if name == "boolean":
        return isinstance(value, bool)
    return isinstance(value, _TYPES[name]) and not (name != "boolean" and isinstance(value, bool))


def validate(value: Any, schema: Any, root: Any = None, path: str = "$") -> None:
    """Raise AssertionError naming the path and the violated keyword."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return
    assert isinstance(schema, dict), f"{path}: bad schema {schema!r}"
    unknown = set(schema) - _CHECKED - _ANNOTATIONS
    assert not unknown, f"the test validator does not know {unknown}"
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        validate(value, target, root, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_is_type(value, name) for name in types), f"{path}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in enum"
    if "const" in schema:
        assert value == schema["const"], f"{path}: {value!r} != const"
    for keyword in ("anyOf", "oneOf"):
        if keyword in schema:
            assert any(_passes(value, option, root) for option in schema[keyword]), (
                f"{path}: no {keyword} matches"
            )
    for option in schema.get("allOf", []):
        validate(value, option, root, path)
    if isinstance(value, dict):
        _validate_object(value, schema, root, path)
    if isinstance(value, list):
        prefix = schema.get("prefixItems", [])
        for index, item in enumerate(value):
            item_schema = prefix[index] if index < len(prefix) else schema.get("items", True)
            validate(item, item_schema, root, f"{path}[{index}]")
        assert len(value) >= schema.get("minItems", 0), f"{path}: minItems"
        assert len(value) <= schema.get("maxItems", len(value)), f"{path}: maxItems"
    if isinstance(value, str):
        assert len(value) >= schema.get("minLength", 0), f"{path}: minLength"
        assert len(value) <= schema.get("maxLength", len(value)), f"{path}: maxLength"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{path}: {value!r} !~ {schema['pattern']}"
    if _is_type(value, "number"):
        assert value >= schema.get("minimum", value), f"{path}: minimum"
        assert value <= schema.get("maximum", value), f"{path}: maximum"
        assert "exclusiveMinimum" not in schema or value > schema["exclusiveMinimum"], (
            f"{path}: exclusiveMinimum"
        )
        assert "exclusiveMaximum" not in schema or value < schema["exclusiveMaximum"], (
            f"{path}: exclusiveMaximum"
        )


def _validate_object(value: dict, schema: dict, root: Any, path: str) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", []):
        assert name in value, f"{path}: missing required {name!r}"
    for name, item in value.items():
        if name in properties:
            validate(item, properties[name], root, f"{path}.{name}")
        else:
            extra = schema.get("additionalProperties", True)
            assert extra is not False, f"{path}: unexpected property {name!r}"
            validate(item, extra, root, f"{path}.{name}")
    assert len(value) >= schema.get("minProperties", 0), f"{path}: minProperties"
    assert len(value) <= schema.get("maxProperties", len(value)), f"{path}: maxProperties"


def _passes(value: Any, schema: Any, root: Any) -> bool:
    try:
        validate(value, schema, root)
    except AssertionError:
        return False
    return True
