"""Structured-output parameters in all three spellings -> StructuredOutputsParams on the engine request."""

from __future__ import annotations

import json

import pytest

from engine.structured_output import StructuredOutputsParams
from tests.triton_adapters.test_generation_request import tensors
from triton_adapters.generation_request import parse_generation_request

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}


def constraint(**values: object) -> StructuredOutputsParams | None:
    return parse_generation_request(tensors(**values)).params.structured_outputs


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        ({"structured_outputs": {"json": SCHEMA}}, StructuredOutputsParams(json=SCHEMA)),
        ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredOutputsParams(regex="[0-9]+")),
        ({"structured_outputs": {"choice": ["a", "b"]}}, StructuredOutputsParams(choice=["a", "b"])),
        (
            {"structured_outputs": {"grammar": 'root ::= "x"'}},
            StructuredOutputsParams(grammar='root ::= "x"'),
        ),
        (
            {
                "structured_outputs": {
                    "json_object": True,
                    "disable_any_whitespace": True,
                    "backend": "xgrammar",
                }
            },
            StructuredOutputsParams(json_object=True, disable_any_whitespace=True),
        ),
        ({"guided_json": json.dumps(SCHEMA)}, StructuredOutputsParams(json=json.dumps(SCHEMA))),
        ({"guided_regex": "x+"}, StructuredOutputsParams(regex="x+")),
        ({"guided_choice": ["yes", "no"]}, StructuredOutputsParams(choice=["yes", "no"])),
        ({"guided_grammar": 'root ::= "y"'}, StructuredOutputsParams(grammar='root ::= "y"')),
    ],
)
def test_vllm_spellings(sampling: dict, expected: StructuredOutputsParams) -> None:
    assert constraint(sampling_parameters=json.dumps(sampling)) == expected


@pytest.mark.parametrize(
    ("guide_type", "guide", "expected"),
    [
        ("json", "", StructuredOutputsParams(json_object=True)),
        ("json_schema", json.dumps(SCHEMA), StructuredOutputsParams(json=json.dumps(SCHEMA))),
        ("regex", "[a-z]+", StructuredOutputsParams(regex="[a-z]+")),
        ("ebnf_grammar", 'root ::= "z"', StructuredOutputsParams(grammar='root ::= "z"')),
        (
            "structural_tag",
            '{"type": "structural_tag"}',
            StructuredOutputsParams(structural_tag='{"type": "structural_tag"}'),
        ),
    ],
)
def test_tensorrt_llm_guide_tensors(guide_type: str, guide: str, expected: StructuredOutputsParams) -> None:
    values = {"guided_decoding_guide_type": guide_type, "guided_decoding_guide": guide}
    assert constraint(**values) == expected


def test_tensors_win_over_sampling_parameters_and_absent_means_none() -> None:
    assert constraint() is None
    assert constraint(guided_decoding_guide_type="") is None
    both = constraint(
        sampling_parameters=json.dumps({"guided_regex": "a"}),
        guided_decoding_guide_type="regex",
        guided_decoding_guide="b",
    )
    assert both == StructuredOutputsParams(regex="b")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sampling_parameters": json.dumps({"guided_regex": "a", "guided_choice": ["b"]})}, "conflict"),
        (
            {"sampling_parameters": json.dumps({"structured_outputs": {"regex": "a", "choice": ["b"]}})},
            "exactly one",
        ),
        (
            {"sampling_parameters": json.dumps({"structured_outputs": {"whitespace_pattern": " "}})},
            "whitespace_pattern",
        ),
        ({"sampling_parameters": json.dumps({"structured_outputs": ["regex"]})}, "must be a JSON object"),
        ({"sampling_parameters": json.dumps({"guided_choice": []})}, None),
        (
            {"guided_decoding_guide_type": "lark_grammar", "guided_decoding_guide": "start: x"},
            "must be one of",
        ),
        ({"guided_decoding_guide_type": "regex"}, "'guided_decoding_guide' is required"),
        ({"guided_decoding_guide": "x"}, "needs 'guided_decoding_guide_type'"),
    ],
)
def test_bad_constraints_name_the_parameter(values: dict, message: str | None) -> None:
    if message is None:  # an empty legacy value means "not asked", as in vLLM
        assert constraint(**values) is None
        return
    with pytest.raises(ValueError, match=message):
        constraint(**values)
