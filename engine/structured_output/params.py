"""What a request asks its output to conform to: vLLM's `StructuredOutputsParams`, with its names."""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from typing import Any

# The constraint kinds, in the order vLLM documents them; exactly one is set per request.
KINDS = ("json", "regex", "choice", "grammar", "json_object", "structural_tag")


@dataclass
class StructuredOutputsParams:
    """One request's output constraint; exactly one of the kind fields is set (validated on construction)."""

    # JSON schema the output must validate against: a dict or its JSON text.
    json: str | dict[str, Any] | None = None
    # Regular expression the whole output must match.
    regex: str | None = None
    # The output is exactly one of these strings.
    choice: list[str] | None = None
    # EBNF grammar (the GBNF dialect xgrammar reads; the start rule is `root`).
    grammar: str | None = None
    # True: the output is any JSON object.
    json_object: bool | None = None
    # xgrammar structural tag as JSON text: free text with constrained segments (e.g. forced tool calls).
    structural_tag: str | None = None
    # JSON kinds only: no optional whitespace between JSON tokens (vLLM's disable_any_whitespace).
    disable_any_whitespace: bool = False

    def __post_init__(self) -> None:
        if self.json_object is False:
            self.json_object = None
        chosen = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(chosen) != 1:
            raise ValueError(
                f"structured_outputs must set exactly one of {', '.join(KINDS)}; got "
                f"{', '.join(chosen) if chosen else 'none'}"
            )
        if self.json is not None and not isinstance(self.json, str | dict):
            raise ValueError(
                f"structured_outputs.json must be a JSON schema object, got {type(self.json).__name__}"
            )
        for kind in ("regex", "grammar", "structural_tag"):
            value = getattr(self, kind)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{kind} must be a non-empty string")
        if self.choice is not None:
            if isinstance(self.choice, str) or not self.choice:
                raise ValueError("structured_outputs.choice must be a non-empty list of strings")
            if not all(isinstance(option, str) and option for option in self.choice):
                raise ValueError("structured_outputs.choice must hold non-empty strings only")
            self.choice = list(self.choice)

    @property
    def kind(self) -> str:
        return next(kind for kind in KINDS if getattr(self, kind) is not None)

    @property
    def spec(self) -> str:
        """The constraint as normalized text (the compile cache key): a schema given as a dict or as JSON
        text gives the same key."""
        value = getattr(self, self.kind)
        if self.kind == "json" and isinstance(value, str):
            try:
                value = jsonlib.loads(value)
            except jsonlib.JSONDecodeError:
                return str(value)  # kept verbatim: validation reports the syntax error
        if self.kind == "structural_tag":
            return str(value)
        if isinstance(value, str):
            return value
        # Key order is kept: xgrammar emits object properties in the order the schema declares them.
        return jsonlib.dumps(value, ensure_ascii=False)

    @property
    def cache_key(self) -> tuple[str, str, bool]:
        """(kind, spec, whitespace flag): what makes two compiled grammars different."""
        return (self.kind, self.spec, self.disable_any_whitespace)
