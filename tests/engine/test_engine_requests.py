"""Engine behaviour beyond greedy parity: validation, stops, sampling, aborts, failed steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from engine import EngineConfig, InvalidRequestError, LLMEngine, SamplingParams
from engine.config import KV_CACHE_DTYPES
from engine.kv_cache import CACHE_DTYPES, resolve_cache_dtype
from tests.engine.conftest import EngineFactory, Reference


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        ({"seed": -1}, "seed"),
        # Past uint64, torch's generators take no seed: neither seed + 1 for an n = 2 request's second sequence.
        ({"seed": 2**64}, "seed"),
        ({"seed": 2**64 - 1, "n": 2}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
        ({"repetition_penalty": float("inf")}, "repetition_penalty"),
        ({"logit_bias": {5: float("nan")}}, "logit_bias"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_sampling_params_name_the_bad_field(fields: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SamplingParams(**fields)


def test_huge_but_meaningful_values_are_bounded() -> None:
    """A top_k past any vocabulary keeps every token (it would overflow the sampler's tensor as given), and
    an infinite bias is the largest one (vLLM clamps both ways to 100)."""
    params = SamplingParams(top_k=10**30, logit_bias={5: float("inf"), 6: float("-inf")})
    assert params.top_k == 2**31 - 1
    assert params.logit_bias == {5: 100.0, 6: -100.0}


def test_one_requests_extreme_parameters_do_not_fail_the_batch(
    engine: LLMEngine, reference: Reference
) -> None:
    """Each of these once failed the whole step (every request in flight aborted): a huge top_k, stop token
    ids past the vocabulary under min_tokens. Beside them a greedy request still gets its reference output."""
    # ignore_eos: EOS is this prompt's second likeliest first token (p = 0.28), and a sampled one would end a
    # request by "stop" where this test asks each to run its length.
    extremes = [
        SamplingParams(top_k=10**30, max_tokens=4, seed=1, ignore_eos=True),
        SamplingParams(stop_token_ids=[10**6, 10**30], min_tokens=2, max_tokens=4, seed=2, ignore_eos=True),
        SamplingParams(temperature=1e-300, max_tokens=4, ignore_eos=True),
        SamplingParams(repetition_penalty=1e300, max_tokens=4, seed=3, ignore_eos=True),
    ]
    for index, params in enumerate(extremes):
        engine.add_request(f"extreme-{index}", reference.prompts[1], params)
    engine.add_request(
        "beside", reference.prompts[0], SamplingParams(temperature=0.0, max_tokens=reference.max_tokens[0])
    )
    tokens: dict[str, list[int]] = {}
    finishes: dict[str, str | None] = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
            if output.finished:
                finishes[output.request_id] = output.finish_reason
    assert tokens["beside"] == reference.outputs[0]
    assert all(finishes[f"extreme-{index}"] == "length" for index in range(len(extremes))), finishes


def test_a_request_that_fails_half_added_leaves_no_trace(engine: LLMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """add_request is all or nothing: a failure registering an n = 2 request's second sequence must not leave
    the first behind (never scheduled, it kept has_unfinished_requests() true and the engine loop spinning)."""
    add = engine.outputs.add
    added: list[str] = []

    def fails_on_the_second(request: object) -> None:
        added.append("one")
        if len(added) == 2:
            raise RuntimeError("a bug registering a sequence")
        add(request)  # type: ignore[arg-type]

    monkeypatch.setattr(engine.outputs, "add", fails_on_the_second)
    with pytest.raises(RuntimeError, match="registering"):
        engine.add_request("half", [1, 2, 3], SamplingParams(n=2, temperature=1.0, max_tokens=2))
    monkeypatch.undo()
    assert not engine.has_unfinished_requests() and engine.unfinished_request_ids() == []
    engine.add_request("half", [1, 2, 3], SamplingParams(n=2, temperature=1.0, max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()


def test_more_sequences_than_seats_are_refused(engine: LLMEngine) -> None:
    seats = engine.config.max_num_seqs
    with pytest.raises(InvalidRequestError, match="max_num_seqs"):
        engine.add_request("too-many", [1, 2, 3], SamplingParams(n=seats + 1, max_tokens=1))
    with pytest.raises(InvalidRequestError, match="max_num_seqs"):
        engine.add_request("too-many", [1, 2, 3], SamplingParams(n=1, best_of=seats + 1, max_tokens=1))


def test_invalid_requests_are_refused_synchronously(engine: LLMEngine) -> None:
    limit = engine.max_model_len
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("bad-empty", [], SamplingParams())
    with pytest.raises(InvalidRequestError, match=f"{limit} tokens.*max_model_len is {limit}"):
        engine.add_request("bad-long", [1] * limit, SamplingParams())
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        engine.add_request("bad-sum", [1] * (limit - 4), SamplingParams(max_tokens=5))
    with pytest.raises(InvalidRequestError, match="out of range"):
        engine.add_request("bad-id", [1, 10**9], SamplingParams())
    engine.add_request("dup", [1, 2, 3], SamplingParams(max_tokens=1))
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("dup", [1, 2, 3], SamplingParams(max_tokens=1))
    engine.abort_request("dup")
    [final] = engine.step()
    assert final.finished and final.finish_reason == "abort"
    assert not engine.has_unfinished_requests()


def test_stop_string_ends_generation_in_the_engine(engine: LLMEngine, reference: Reference) -> None:
    prompt, expected = reference.prompts[3], reference.outputs[3]
    full_text = engine.tokenizer.decode(expected)
    # A stop string from the middle of the known greedy continuation, spanning a token boundary.
    stop = full_text[len(full_text) // 3 : len(full_text) // 3 + 6]
    [result] = engine.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=len(expected), stop=[stop])
    )
    assert result.finish_reason == "stop" and result.stop_reason == stop
    assert result.text == full_text[: full_text.index(stop)]
    assert len(result.token_ids) < len(expected)
    assert result.token_ids == expected[: len(result.token_ids)]
    [kept] = engine.generate(
        [prompt],
        SamplingParams(
            temperature=0.0, max_tokens=len(expected), stop=[stop], include_stop_str_in_output=True
        ),
    )
    assert kept.text == full_text[: full_text.index(stop) + len(stop)]


def test_stop_token_ids_min_tokens_and_eos(engine: LLMEngine, reference: Reference) -> None:
    prompt, expected = reference.prompts[0], reference.outputs[0]
    stop_token = expected[2]
    [result] = engine.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=[stop_token])
    )
    first = expected.index(stop_token)
    assert result.token_ids == expected[: first + 1]
    assert result.finish_reason == "stop" and result.stop_reason == stop_token
    # min_tokens masks the stop token until reached: greedy then picks something else at that step.
    [delayed] = engine.generate(
        [prompt],
        SamplingParams(temperature=0.0, max_tokens=8, min_tokens=first + 2, stop_token_ids=[stop_token]),
    )
    assert stop_token not in delayed.token_ids[: first + 2]
    # EOS ends a request unless ignore_eos; ignore_eos runs to max_tokens.
    chat = engine.tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say OK."}], add_generation_prompt=True, tokenize=False
    )
    eos_prompt = engine.tokenizer.encode(chat)
    [stopped] = engine.generate([eos_prompt], SamplingParams(temperature=0.0, max_tokens=24))
    assert stopped.finish_reason == "stop" and stopped.token_ids[-1] == 2 and stopped.stop_reason is None
    [ignored] = engine.generate(
        [eos_prompt], SamplingParams(temperature=0.0, max_tokens=len(stopped.token_ids) + 2, ignore_eos=True)
    )
    assert ignored.finish_reason == "length" and len(ignored.token_ids) == len(stopped.token_ids) + 2


def test_seeded_sampling_is_reproducible_across_batches(engine: LLMEngine, reference: Reference) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.95, max_tokens=8, seed=1234)
    [alone] = engine.generate([reference.prompts[1]], seeded)
    other = SamplingParams(temperature=1.0, max_tokens=8)
    batch = engine.generate(
        [reference.prompts[0], reference.prompts[1], reference.prompts[2]], [other, seeded, other]
    )
    assert batch[1].token_ids == alone.token_ids
    assert len(alone.token_ids) == 8 or alone.finish_reason == "stop"


def test_abort_frees_blocks_and_emits_final_output(engine: LLMEngine, reference: Reference) -> None:
    engine.add_request("to-abort", reference.prompts[7], SamplingParams(temperature=0.0, max_tokens=16))
    engine.step()
    engine.step()
    assert engine.stats().kv_blocks_free < engine.stats().kv_blocks_total
    engine.abort_request("to-abort")
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total
    outputs = engine.step()
    assert [(o.request_id, o.finished, o.finish_reason) for o in outputs] == [("to-abort", True, "abort")]
    assert not engine.has_unfinished_requests()
    engine.abort_request("to-abort")  # idempotent


def test_failed_step_aborts_its_requests_and_engine_keeps_serving(
    engine: LLMEngine, reference: Reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_run(*args: object) -> None:
        raise RuntimeError("injected kernel failure")

    engine.add_request("doomed", reference.prompts[0], SamplingParams(temperature=0.0, max_tokens=4))
    with monkeypatch.context() as patch:
        patch.setattr(engine.runner, "run", broken_run)
        outputs = engine.step()
    assert [(o.request_id, o.finish_reason) for o in outputs] == [("doomed", "abort")]
    assert outputs[0].error is not None and "injected kernel failure" in outputs[0].error
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total
    [result] = engine.generate(
        [reference.prompts[0]], SamplingParams(temperature=0.0, max_tokens=reference.max_tokens[0])
    )
    assert result.token_ids == reference.outputs[0]


def test_kv_cache_dtypes_without_a_kernel_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(CACHE_DTYPES) == set(KV_CACHE_DTYPES) - {"auto"}  # the config's names, the cache's types
    assert resolve_cache_dtype("auto", torch.float16, torch.device("cuda")) == torch.float16
    assert resolve_cache_dtype("bfloat16", torch.float32, torch.device("cpu")) == torch.bfloat16
    assert resolve_cache_dtype("bfloat16", torch.bfloat16, torch.device("cuda")) == torch.bfloat16
    for dtype, device in ((torch.float32, "cuda"), (torch.float16, "cuda"), (torch.float16, "cpu")):
        with pytest.raises(ValueError, match="kv_cache_dtype=bfloat16 under a"):
            resolve_cache_dtype("bfloat16", dtype, torch.device(device))
    for dtype in (torch.float32, torch.bfloat16):
        assert resolve_cache_dtype("fp8", dtype, torch.device("cpu")) == torch.float8_e4m3fn
        assert resolve_cache_dtype("fp8_e4m3", dtype, torch.device("cpu")) == torch.float8_e4m3fn
        assert resolve_cache_dtype("fp8_e5m2", dtype, torch.device("cpu")) == torch.float8_e5m2
    # On CUDA, from compute capability 8.9 (Ada, Hopper) on; not on an A100 (8.0).
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert resolve_cache_dtype("fp8", torch.bfloat16, torch.device("cuda")) == torch.float8_e4m3fn
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    with pytest.raises(ValueError, match="kv_cache_dtype=fp8_e5m2 on cuda needs compute capability 8.9"):
        resolve_cache_dtype("fp8_e5m2", torch.bfloat16, torch.device("cuda"))
    with pytest.raises(ValueError, match=re.escape("kv_cache_dtype must be auto|bfloat16|fp8|fp8_e4m3|fp8_e5m2, got 'int8'")):
        EngineConfig(model="unused", kv_cache_dtype="int8")


def test_checkpoint_eos_ids_stop_and_are_named(
    make_engine: EngineFactory, model_dir: Path, reference: Reference, tmp_path: Path
) -> None:
    # A checkpoint whose generation_config adds an EOS id beside the tokenizer's (as Qwen3's adds
    # <|endoftext|> to <|im_end|>): greedy's third token here.
    prompt, expected = reference.prompts[0], reference.outputs[0]
    extra_eos = expected[2]
    assert extra_eos not in expected[:2] and extra_eos != 2
    for item in model_dir.iterdir():
        (tmp_path / item.name).symlink_to(item)
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, extra_eos]}))
    engine = make_engine(model=str(tmp_path), kv_cache_memory=8 << 20)
    [stopped] = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8))
    assert stopped.token_ids == expected[:3]
    # vLLM's stop_reason: the id, as for a stop token (the tokenizer's own EOS reads None).
    assert stopped.finish_reason == "stop" and stopped.stop_reason == extra_eos
    [ignored] = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True))
    assert ignored.token_ids == expected[:8] and ignored.finish_reason == "length"


def test_calculate_kv_scales_measures_the_first_prompts_and_keeps_them(
    make_engine: EngineFactory, reference: Reference
) -> None:
    with pytest.raises(ValueError, match="calculate_kv_scales needs an fp8 kv_cache_dtype"):
        EngineConfig(model="unused", calculate_kv_scales=True)
    measuring = make_engine(kv_cache_dtype="fp8", calculate_kv_scales=True, kv_cache_memory=8 << 20)
    layers = measuring.runner.model.attention_layers()
    assert all(layer.calculate_kv_scales for layer in layers)
    greedy = SamplingParams(temperature=0.0, max_tokens=6)
    first = measuring.generate(reference.prompts[:2], greedy)
    scales = [(layer.k_scale.item(), layer.v_scale.item()) for layer in layers]
    assert not any(layer.calculate_kv_scales for layer in layers)
    assert all(0 < k != 1.0 and 0 < v != 1.0 for k, v in scales)
    later = measuring.generate(reference.prompts[2:4], greedy)
    assert [(layer.k_scale.item(), layer.v_scale.item()) for layer in layers] == scales
    # An engine given the same scales (as a checkpoint would give them) answers token for token the same.
    given = make_engine(kv_cache_dtype="fp8", kv_cache_memory=8 << 20)
    for layer, (k_scale, v_scale) in zip(given.runner.model.attention_layers(), scales, strict=True):
        layer.k_scale.fill_(k_scale)
        layer.v_scale.fill_(v_scale)
        layer.kv_scaled = True
    # (In the same batches: a batch's shape may move float32 products by an ulp.)
    answers = given.generate(reference.prompts[:2], greedy) + given.generate(reference.prompts[2:4], greedy)
    assert [r.token_ids for r in answers] == [r.token_ids for r in first + later]
