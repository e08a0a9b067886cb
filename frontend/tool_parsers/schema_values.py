"""Tool-call parameter values written as plain text, turned into the JSON value their schema declares.

Qwen3-Coder writes every parameter as raw text; vLLM's `qwen3_coder` parser converts each by the type the
request's tool schema gives it, and so does `json_value` (including vLLM's loose type names such as `int`,
`float` or `dict`). Text that does not fit its type, and a parameter the schema does not declare, stays the
text it was. It never raises: the model writes what it writes.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

STRING_TYPES = frozenset({"string", "str", "text", "varchar", "char", "enum"})
BOOLEAN_TYPES = frozenset({"boolean", "bool", "binary"})
INTEGER_PREFIXES = ("int", "uint", "long", "short", "unsigned")
NUMBER_PREFIXES = ("num", "float")
CONTAINER_TYPES = frozenset({"object", "array", "arr"})
CONTAINER_PREFIXES = ("dict", "list")
# Written for null; "None" too, as Qwen templates that render arguments with `| string` taught models.
NULL_WORDS = frozenset({"null", "none"})
# Errors of decoding arbitrary text: malformed, unsupported, or nested deeper than the decoders go.
DECODE_ERRORS = (ValueError, TypeError, SyntaxError, RecursionError, MemoryError)
# What `_attempt` returns when the decoder refuses the text (None is a decoded value).
FAILED: Final = object()


def json_value(text: str, schema: object) -> str:
    """JSON text of the value `text` stands for under the parameter's `schema` (None: not declared)."""
    value = _converted(text, schema)
    try:
        # allow_nan=False: NaN and Infinity (json.loads and ast accept them) are not JSON.
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        # ast.literal_eval also makes sets, bytes and complex numbers, which JSON has no form for.
        return json.dumps(text, ensure_ascii=False)


def _converted(text: str, schema: object) -> Any:
    if schema is None:
        return text
    kind, nullable = _declared_type(schema)
    # A string parameter keeps the word "null" unless its schema admits null.
    if text.lower() in NULL_WORDS and (nullable or kind not in STRING_TYPES):
        return None
    if kind in STRING_TYPES:
        return text
    if kind.startswith(INTEGER_PREFIXES):
        number = _attempt(int, text)
        return text if number is FAILED else number
    if kind.startswith(NUMBER_PREFIXES):
        real = _attempt(float, text)
        if real is FAILED or not math.isfinite(real):
            return text
        # vLLM writes a whole number without its ".0".
        return int(real) if real.is_integer() else real
    if kind in BOOLEAN_TYPES:
        # As vLLM: anything but "true" is false.
        return text.lower() == "true"
    return _decoded(text, kind in CONTAINER_TYPES or kind.startswith(CONTAINER_PREFIXES))


def _declared_type(schema: object) -> tuple[str, bool]:
    """The parameter's type name (lower case; "string" when it declares none) and whether it admits null.
    A union (`"type": [...]`, `anyOf`, `oneOf`) is read as its first type other than null."""
    if not isinstance(schema, Mapping):
        return "string", False
    names: list[str] = []
    if "type" in schema:
        names = _type_names(schema["type"])
    else:
        options = schema.get("anyOf") or schema.get("oneOf")
        for option in options if isinstance(options, list) else []:
            if isinstance(option, Mapping) and "type" in option:
                names += _type_names(option["type"])
    kind = next((name for name in names if name != "null"), "string")
    return kind, "null" in names


def _type_names(declared: object) -> list[str]:
    options = declared if isinstance(declared, list) else [declared]
    return [str(option).strip().lower() for option in options]


def _decoded(text: str, container: bool) -> Any:
    """An object or array as JSON, else as a Python literal; any other type as a Python literal (vLLM's
    order); the text itself when neither reads it."""
    value = _attempt(json.loads, text) if container else FAILED
    if value is FAILED:
        value = _attempt(ast.literal_eval, text)
    if value is FAILED:
        return text
    if container and isinstance(value, str):
        # Templates that wrote `json.dumps(str(arguments))` taught models to quote a Python repr.
        inner = _attempt(ast.literal_eval, value)
        return value if inner is FAILED else inner
    return value


def _attempt(decode: Callable[[str], Any], text: str) -> Any:
    try:
        return decode(text)
    except DECODE_ERRORS:
        return FAILED
