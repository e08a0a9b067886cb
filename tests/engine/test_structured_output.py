"""Structured outputs through xgrammar: validation, the compile cache, the bitmask, and greedy SmolLM2
outputs that must parse and validate (a fixed real-world corpus plus hypothesis-generated schemas)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import pytest
import torch
import xgrammar as xgr
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from transformers import PreTrainedTokenizerBase

from engine import InvalidRequestError, LLMEngine, SamplingParams
from engine.structured_output import StructuredOutputsParams
from engine.structured_output.bitmask import GrammarBitmask
from engine.structured_output.compiler import GrammarCompiler
from engine.structured_output.grammars import check_json_schema
from engine.structured_output.manager import StructuredOutputManager
from tests.engine.json_schema_check import validate
from tests.engine.structured_schemas import CORPUS

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}

GREETING_GRAMMAR = """
root ::= greeting " " name "!"
greeting ::= "Hello" | "Hi"
name ::= [A-Z] [a-z]{1,6}
"""

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"]}
# xgrammar's structural tag: a tool call in Hermes markers whose body follows a schema.
TOOL_CALL_TAG = {
    "type": "structural_tag",
    "format": {
        "type": "tag",
        "begin": "<tool_call>",
        "content": {"type": "json_schema", "json_schema": CITY},
        "end": "</tool_call>",
    },
}


def chat(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(encoded["input_ids"])


def constrained(max_tokens: int, **constraint: object) -> SamplingParams:
    return SamplingParams(
        temperature=0.0, max_tokens=max_tokens, structured_outputs=StructuredOutputsParams(**constraint)
    )


# -- parameters and validation (no model run) ---------------------------------------------------------


def test_exactly_one_kind_is_required() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        StructuredOutputsParams()
    with pytest.raises(ValueError, match="got json, regex"):
        StructuredOutputsParams(json=PERSON, regex="a+")
    with pytest.raises(ValueError, match="choice"):
        StructuredOutputsParams(choice=[])
    as_text = StructuredOutputsParams(json=json.dumps(PERSON, indent=2))
    assert as_text.cache_key == StructuredOutputsParams(json=PERSON).cache_key
    # Property order shapes the output (properties come in declared order): a different key.
    reordered = {**PERSON, "properties": dict(reversed(PERSON["properties"].items()))}
    assert StructuredOutputsParams(json=reordered).cache_key != as_text.cache_key


def nested(depth: int) -> dict:
    """A hostile schema: arrays of arrays `depth` levels deep."""
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        ({"json": "{not json"}, "invalid json: the JSON schema is not valid JSON"),
        ({"json": {"type": "frobnicate"}}, 'Unsupported type "frobnicate"'),
        (
            {"json": {"type": "array", "uniqueItems": True}},
            "unsupported JSON schema feature 'uniqueItems' at #",
        ),
        (
            {"json": {"type": "object", "properties": {"a": {"not": {"type": "string"}}}}},
            "'not' at #/properties/a",
        ),
        ({"json": {"allOf": [{"type": "object"}, {"required": ["a"]}]}}, "'allOf' with more than one"),
        ({"json": {"$ref": "https://example.com/schema.json"}}, "'\\$ref' to another document"),
        ({"regex": "[a-"}, "invalid regex: Regex parsing error at position 4"),
        ({"regex": "a(?=b)"}, "Lookahead is not supported"),
        ({"grammar": "root ::= missing"}, 'invalid grammar: .*Rule "missing" is not defined'),
        ({"structural_tag": "{}"}, "parameter 'structured_outputs': invalid structural_tag"),
        ({"json": nested(10_000)}, "nests deeper than 64 levels"),
        ({"json": '{"items": ' * 100_000}, "invalid json"),
    ],
)
def test_invalid_constraints_are_refused_before_queueing(
    engine: LLMEngine, tokenizer: PreTrainedTokenizerBase, constraint: dict, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        engine.add_request("refused", chat(tokenizer, "Hi"), constrained(4, **constraint))
    assert not engine.has_unfinished_requests()


def test_vllm_legacy_structural_tag_is_accepted() -> None:
    legacy = {"structures": [{"begin": "<f>", "schema": CITY, "end": "</f>"}], "triggers": ["<f"]}
    StructuredOutputManager.validate(StructuredOutputsParams(structural_tag=json.dumps(legacy)))
    legacy["structures"][0]["schema"] = {"type": "array", "uniqueItems": True}
    with pytest.raises(ValueError, match="uniqueItems"):
        StructuredOutputManager.validate(StructuredOutputsParams(structural_tag=json.dumps(legacy)))


def test_property_named_like_a_keyword_is_fine() -> None:
    check_json_schema(
        {"type": "object", "properties": {"not": {"type": "string"}, "if": {"type": "integer"}}}
    )


# -- compile cache and bitmask ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def padded_compiler(tokenizer: PreTrainedTokenizerBase) -> Iterator[GrammarCompiler]:
    """A compiler for logits wider than the tokenizer (padded embedding rows, as many checkpoints have)."""
    compiler = GrammarCompiler(tokenizer, len(tokenizer) + 64, [tokenizer.eos_token_id])
    yield compiler
    compiler.shutdown()


def test_equal_constraints_share_one_compile(padded_compiler: GrammarCompiler) -> None:
    before = padded_compiler.num_compiles
    first = padded_compiler.compile(StructuredOutputsParams(regex="[0-9]{3}"))
    second = padded_compiler.compile(StructuredOutputsParams(regex="[0-9]{3}"))
    other = padded_compiler.compile(StructuredOutputsParams(regex="[0-9]{4}"))
    assert first is second and other is not first
    assert padded_compiler.num_compiles == before + 2
    assert first.result(timeout=60).tokenizer_info.vocab_size == padded_compiler.vocab_size


def test_choices_with_quotes_escapes_and_unicode_match_exactly(padded_compiler: GrammarCompiler) -> None:
    choices = ['say "hi"\n', "café", "back\\slash", "tab\there"]
    compiled = padded_compiler.compile(StructuredOutputsParams(choice=choices)).result(timeout=60)
    for text, expected in [(choice, True) for choice in choices] + [("say hi", False), ("cafe", False)]:
        matcher = xgr.GrammarMatcher(compiled)
        assert (matcher.accept_string(text) and matcher.is_completed()) is expected, text


def _unpacked(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    shifts = torch.arange(32, dtype=torch.int32)
    return ((bitmask.unsqueeze(-1) >> shifts) & 1).reshape(bitmask.shape[0], -1)[:, :vocab].bool()


def test_bitmask_application_matches_a_torch_reference(
    padded_compiler: GrammarCompiler, tokenizer: PreTrainedTokenizerBase
) -> None:
    vocab = padded_compiler.vocab_size
    compiled = padded_compiler.compile(StructuredOutputsParams(regex="[0-9]{3}")).result(timeout=60)
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(4, vocab)
    for row in (1, 3):
        matcher.fill_next_token_bitmask(bitmask, row)
    logits = torch.randn(4, vocab, generator=torch.Generator().manual_seed(0))
    expected = logits.clone()
    allowed = _unpacked(bitmask, vocab)
    for row in (1, 3):
        expected[row] = torch.where(allowed[row], logits[row], float("-inf"))
    GrammarBitmask(bitmask=bitmask, rows=[1, 3], vocab_size=vocab).apply(logits)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    # Rows 0 and 2 are untouched; the constrained rows allow digits only, never a padding column.
    allowed_tokens = torch.nonzero(allowed[1]).flatten().tolist()
    assert allowed_tokens and all(re.fullmatch("[0-9]+", tokenizer.decode([t])) for t in allowed_tokens)
    assert torch.isinf(logits[1, len(tokenizer) :]).all()


# -- greedy generation on SmolLM2 ---------------------------------------------------------------------


def test_every_kind_constrains_greedy_output(engine: LLMEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    requests = [
        ("Give me a person as JSON.", constrained(48, json=PERSON)),
        ("Is the sky blue? Answer yes or no.", constrained(8, choice=["yes", "no", "maybe so"])),
        ("What is your phone number?", constrained(16, regex=r"[0-9]{3}-[0-9]{4}")),
        (
            'Reply with the JSON object {"ok": true}.',
            constrained(48, json_object=True, disable_any_whitespace=True),
        ),
        ("Greet Bob.", constrained(16, grammar=GREETING_GRAMMAR)),
        ("Call the weather tool for Paris.", constrained(40, structural_tag=json.dumps(TOOL_CALL_TAG))),
        # Grammar completion ends the request even where EOS would not.
        (
            "Pick a letter.",
            SamplingParams(
                temperature=0.0,
                max_tokens=8,
                ignore_eos=True,
                structured_outputs=StructuredOutputsParams(choice=["x", "y"]),
            ),
        ),
        ("Tell me a story.", SamplingParams(temperature=0.0, max_tokens=8)),
    ]
    results = engine.generate([chat(tokenizer, q) for q, _ in requests], [p for _, p in requests])
    person, choice, regex, any_json, grammar, tagged, forced, free = results
    validate(json.loads(person.text), PERSON)
    assert choice.text in ("yes", "no", "maybe so")
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", regex.text)
    assert isinstance(json.loads(any_json.text), dict)
    assert re.fullmatch(r"(Hello|Hi) [A-Z][a-z]{1,6}!", grammar.text)
    assert forced.text in ("x", "y")
    call = re.fullmatch("<tool_call>(.*)</tool_call>", tagged.text, re.DOTALL)
    assert call, tagged.text
    validate(json.loads(call.group(1)), CITY)
    assert all(r.finish_reason == "stop" for r in results[:-1]), [r.finish_reason for r in results]
    assert free.finish_reason == "length" and free.text


def test_real_world_schema_corpus(engine: LLMEngine, tokenizer: PreTrainedTokenizerBase) -> None:
    prompts = [chat(tokenizer, f"Give me {what} as JSON.") for what, _ in CORPUS]
    params = [constrained(80, json=schema, disable_any_whitespace=True) for _, schema in CORPUS]
    for (what, schema), result in zip(CORPUS, engine.generate(prompts, params), strict=True):
        assert result.finish_reason == "stop", (what, result.text)
        validate(json.loads(result.text), schema)


_SCALARS = st.sampled_from(
    [
        {"type": "integer", "minimum": -999, "maximum": 999},
        {"type": "integer", "minimum": 0, "maximum": 99},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "string", "maxLength": 8},
        {"type": "string", "pattern": "^[a-z]{2,4}$"},
        {"enum": ["red", "green", "blue"]},
        {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 2},
    ]
)
_NAMES = st.text(alphabet="abcdefghijklmnop_", min_size=1, max_size=6)


@st.composite
def simple_schemas(draw: st.DrawFn) -> dict:
    properties = draw(st.dictionaries(_NAMES, _SCALARS, min_size=1, max_size=3))
    if draw(st.booleans()):
        inner = draw(st.dictionaries(_NAMES, _SCALARS, min_size=1, max_size=2))
        properties["nested"] = {"type": "object", "properties": inner, "required": sorted(inner)}
    required = draw(st.lists(st.sampled_from(sorted(properties)), unique=True))
    return {"type": "object", "properties": properties, "required": required}


# Bounded for the 2-core CI: few examples, no shrinking (a failing example is printed as drawn).
@settings(
    max_examples=3,
    deadline=None,
    derandomize=True,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(schemas=st.lists(simple_schemas(), min_size=3, max_size=3))
def test_generated_schemas(
    engine: LLMEngine, tokenizer: PreTrainedTokenizerBase, schemas: list[dict]
) -> None:
    prompt = chat(tokenizer, "Reply with a JSON object.")
    results = engine.generate(
        [prompt] * len(schemas), [constrained(96, json=s, disable_any_whitespace=True) for s in schemas]
    )
    for schema, result in zip(schemas, results, strict=True):
        assert result.finish_reason == "stop", (schema, result.text)
        validate(json.loads(result.text), schema)


# -- scheduling around compiles -----------------------------------------------------------------------


@pytest.fixture
def gated_compiles(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Compiles started while the gate is closed wait for it: a slow compile, made deterministic."""
    gate = threading.Event()
    compile_now = engine.structured.compiler._compile

    def gated(params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        assert gate.wait(timeout=60), "the test never opened the gate"
        return compile_now(params)

    monkeypatch.setattr(engine.structured.compiler, "_compile", gated)
    yield gate
    gate.set()


def test_a_compiling_request_waits_without_blocking_others(
    engine: LLMEngine, tokenizer: PreTrainedTokenizerBase, gated_compiles: threading.Event
) -> None:
    prompt = chat(tokenizer, "Give me a number.")
    engine.add_request("slow-grammar", prompt, constrained(8, regex="[1-9][0-9]{2}"))
    engine.add_request("free", prompt, SamplingParams(temperature=0.0, max_tokens=2))
    engine.add_request("parked-abort", prompt, constrained(8, regex="[1-9][0-9]{2}"))
    engine.abort_request("parked-abort")
    seen: dict[str, list] = {}
    while "free" not in seen or not seen["free"][-1].finished:
        for output in engine.step():
            seen.setdefault(output.request_id, []).append(output)
    assert engine.structured.is_parked("slow-grammar") and "slow-grammar" not in seen
    assert seen["parked-abort"][-1].finish_reason == "abort"
    gated_compiles.set()
    while engine.has_unfinished_requests():
        for output in engine.step():
            seen.setdefault(output.request_id, []).append(output)
    text = "".join(output.text_delta for output in seen["slow-grammar"])
    assert re.fullmatch("[1-9][0-9]{2}", text) and seen["slow-grammar"][-1].finish_reason == "stop"


def test_a_failed_compile_fails_only_its_request(
    engine: LLMEngine, tokenizer: PreTrainedTokenizerBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        raise RuntimeError("out of grammar memory")

    monkeypatch.setattr(engine.structured.compiler, "_compile", broken)
    prompt = chat(tokenizer, "Hi")
    engine.add_request("doomed", prompt, constrained(4, regex="[a-z]{1,3}!"))
    engine.add_request("fine", prompt, SamplingParams(temperature=0.0, max_tokens=2))
    finals = {}
    while engine.has_unfinished_requests():
        finals.update({output.request_id: output for output in engine.step() if output.finished})
    assert finals["doomed"].finish_reason == "abort"
    assert "could not be compiled: out of grammar memory" in (finals["doomed"].error or "")
    assert finals["fine"].finish_reason == "length"
