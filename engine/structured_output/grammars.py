"""StructuredOutputsParams -> xgrammar Grammar, refusing what xgrammar would not enforce.

Building a Grammar parses and converts the spec without the tokenizer: it takes milliseconds, so it
doubles as validation before a request is queued. Compiling it against the vocabulary is the expensive
part and happens later, on the compile pool (see compiler.py).

xgrammar 0.2.8 accepts some JSON-schema keywords and then does not enforce them (it warns or
ignores them: `not`, `if`/`then`/`else`, `uniqueItems`, `contains`, `dependentSchemas`, a multi-entry
`allOf`, references outside the document). Output generated under such a schema could violate it, so
those schemas are refused with the keyword and its location named, never silently loosened.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import xgrammar as xgr

from engine.structured_output.params import StructuredOutputsParams

# Validation keywords xgrammar 0.2.8 accepts without enforcing them.
UNENFORCED_KEYWORDS = (
    "not",
    "if",
    "then",
    "else",
    "contains",
    "minContains",
    "maxContains",
    "dependentSchemas",
    "unevaluatedItems",
)
# Keywords whose value is one subschema / a list of them / a name -> subschema mapping.
_SUBSCHEMA = ("additionalProperties", "items", "propertyNames", "unevaluatedProperties", "additionalItems")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")
# Deeper schemas are refused: real ones nest a handful of levels, and the walk here and xgrammar's own
# conversion are recursive (a hostile 10,000-level schema would exhaust the stack).
MAX_SCHEMA_DEPTH = 64


def check_json_schema(schema: Any, path: str = "#", depth: int = 0) -> None:
    """Raise ValueError naming the first keyword (and where it is) that the schema uses but xgrammar
    would not enforce, or where the schema nests deeper than MAX_SCHEMA_DEPTH."""
    if depth > MAX_SCHEMA_DEPTH:
        raise ValueError(f"JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels at {path[:200]}...")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise ValueError(f"JSON schema at {path} must be an object or a boolean, got {type(schema).__name__}")
    for keyword in UNENFORCED_KEYWORDS:
        if keyword in schema:
            raise ValueError(f"unsupported JSON schema feature '{keyword}' at {path}")
    if schema.get("uniqueItems") is True:
        raise ValueError(f"unsupported JSON schema feature 'uniqueItems' at {path}")
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) > 1:
        raise ValueError(f"unsupported JSON schema feature 'allOf' with more than one schema at {path}")
    reference = schema.get("$ref")
    if reference is not None and not (isinstance(reference, str) and reference.startswith("#")):
        raise ValueError(
            f"unsupported JSON schema feature '$ref' to another document ({reference!r}) at {path}"
        )
    for keyword in _SUBSCHEMA:
        if keyword in schema and not isinstance(schema[keyword], list):
            check_json_schema(schema[keyword], f"{path}/{keyword}", depth + 1)
    for keyword in _SUBSCHEMA_LISTS + ("items",):
        if isinstance(schema.get(keyword), list):
            for index, item in enumerate(schema[keyword]):
                check_json_schema(item, f"{path}/{keyword}/{index}", depth + 1)
    for keyword in _SUBSCHEMA_MAPS:
        if isinstance(schema.get(keyword), dict):
            for name, item in schema[keyword].items():
                check_json_schema(item, f"{path}/{keyword}/{name}", depth + 1)


def choice_grammar(choices: list[str]) -> str:
    """EBNF accepting exactly one of `choices`; JSON string escapes are also EBNF string escapes."""
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


def build_grammar(params: StructuredOutputsParams) -> xgr.Grammar:
    """The xgrammar Grammar of a constraint; ValueError naming the parameter and the problem otherwise.
    Thread-safe: it touches no shared state."""
    kind = params.kind
    try:
        if kind == "json":
            schema = params.json
            if isinstance(schema, str):
                try:
                    schema = json.loads(schema)
                except json.JSONDecodeError as error:
                    raise ValueError(f"the JSON schema is not valid JSON: {error}") from None
            check_json_schema(schema)
            return xgr.Grammar.from_json_schema(
                json.dumps(schema), any_whitespace=not params.disable_any_whitespace
            )
        if kind == "json_object":
            return xgr.Grammar.from_json_schema(
                '{"type": "object"}', any_whitespace=not params.disable_any_whitespace
            )
        if kind == "regex":
            return xgr.Grammar.from_regex(str(params.regex))
        if kind == "choice":
            return xgr.Grammar.from_ebnf(choice_grammar(list(params.choice or [])))
        if kind == "grammar":
            return xgr.Grammar.from_ebnf(str(params.grammar))
        return _structural_tag_grammar(str(params.structural_tag))
    except (RuntimeError, ValueError, TypeError) as error:
        # "parameter '...'" is how servers name the offending request field (the frontend maps it back).
        raise ValueError(f"parameter 'structured_outputs': invalid {kind}: {_short(error)}") from None


def _structural_tag_grammar(text: str) -> xgr.Grammar:
    """xgrammar's structural tag (`{"type": "structural_tag", "format": ...}`), or vLLM's older form
    `{"structures": [{"begin", "schema", "end"}], "triggers": [...]}` that vLLM still accepts."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the structural tag is not valid JSON: {error}") from None
    if not (isinstance(spec, dict) and "structures" in spec):
        return xgr.Grammar.from_structural_tag(text)
    try:
        tags = [
            xgr.StructuralTagItem(begin=item["begin"], schema=json.dumps(item["schema"]), end=item["end"])
            for item in spec["structures"]
        ]
        triggers = [str(trigger) for trigger in spec["triggers"]]
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"structures need begin, schema and end, and triggers are required ({error})"
        ) from None
    for item in spec["structures"]:
        check_json_schema(item["schema"])
    with warnings.catch_warnings():  # xgrammar deprecates this form; vLLM clients still send it
        warnings.simplefilter("ignore", DeprecationWarning)
        return xgr.Grammar.from_structural_tag(tags, triggers)


def _short(error: Exception) -> str:
    """xgrammar's C++ errors start with a timestamp and source location; keep the message."""
    text = str(error).strip()
    if text.startswith("[") and ".cc:" in text:
        text = text.split(": ", 1)[-1]
    return " ".join(text.split())
