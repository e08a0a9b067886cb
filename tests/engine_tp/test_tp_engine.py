"""Tensor parallelism end to end: tp>1 engines (gloo on the CPU, worker processes) generate exactly what
tp=1 generates, and their workers stop with the engine or fail it loudly."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from engine import EngineConfig, LLMEngine, SamplingParams, SpeculativeConfig
from tests.engine_tp.conftest import EngineFactory
from tests.lora_adapter import write_random_adapter

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
# Seeded sampling follows the logits closely, so it also catches differences greedy ties could hide.
SEEDED = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
# The first prompt (40 tokens) needs three steps to prefill under a 16-token step budget.
TINY_PROMPTS = [[(5 * i + 3) % 200 + 10 for i in range(40)], [3, 4, 5]]


def generate(engine: LLMEngine, prompts: list[list[int]], params: list[SamplingParams]) -> list[list[int]]:
    return [result.token_ids for result in engine.generate(prompts, params)]


def tp_matches_tp1(
    make_engine: EngineFactory, model: Path, tp: int, prompts: list[list[int]], params: list[SamplingParams]
) -> tuple[LLMEngine, LLMEngine]:
    """Generate with tp=1 and with `tp` under a chunking step budget; returns both engines, the tp one
    shut down."""
    single = make_engine(model, 1, max_num_batched_tokens=16)
    expected = generate(single, prompts, params)
    parallel = make_engine(model, tp, max_num_batched_tokens=16)
    try:
        assert generate(parallel, prompts, params) == expected
    finally:
        parallel.shutdown()
    return single, parallel


def assert_workers_gone(engine: LLMEngine, count: int) -> None:
    workers = engine.runner.workers
    assert workers is not None and len(workers.processes) == count
    assert [process.exitcode for process in workers.processes] == [0] * count


def test_smollm2_tp3_matches_tp1(make_engine: EngineFactory, model_path: Path) -> None:
    # SmolLM2: 9 query heads and 3 KV heads, so each of 3 ranks holds 3 query heads and 1 KV head.
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = [
        tokenizer.encode("The capital of France is"),
        tokenizer.encode(
            "Once upon a time, in a small village at the edge of a dark forest, there lived an old "
            "woodcutter who had three sons and"
        ),
    ]
    assert len(prompts[1]) > 16
    single, engine = tp_matches_tp1(make_engine, model_path, 3, prompts, [GREEDY, GREEDY])
    assert engine.runner.kv_cache.shape[-3] == 1
    # kv_cache_memory covers all ranks: split KV heads leave the pool as large as with one rank.
    assert engine.runner.num_blocks == single.runner.num_blocks
    assert_workers_gone(engine, 2)


def logprob_rows(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> list[tuple[int, float]]:
    """(token id, logprob) of every prompt position after the first, then of every sampled token."""
    engine.add_request("logprobs", prompt, params)
    rows: list[tuple[int, float]] = []
    generated: list[tuple[int, float]] = []
    while engine.has_unfinished_requests():
        for output in engine.step():
            rows += [(p.token_id, p.logprob) for p in output.prompt_logprobs or [] if p is not None]
            generated += [(p.token_id, p.logprob) for p in output.logprobs or []]
    return rows + generated


def test_tiny_qwen3_tp2_matches_tp1(make_engine: EngineFactory, tiny_qwen3: Path) -> None:
    prompts, params = TINY_PROMPTS * 2, [GREEDY, GREEDY, SEEDED, SEEDED]
    # Prompt logprobs take logits of other rows than sampling does, over a chunked prefill: rank 0
    # mirrors every logits call on the workers, whatever rows it asks for.
    with_logprobs = SamplingParams(
        temperature=0.0, max_tokens=4, ignore_eos=True, logprobs=2, prompt_logprobs=1
    )
    single = make_engine(tiny_qwen3, 1, max_num_batched_tokens=16)
    expected = generate(single, prompts, params)
    expected_logprobs = logprob_rows(single, TINY_PROMPTS[0], with_logprobs)
    parallel = make_engine(tiny_qwen3, 2, max_num_batched_tokens=16)
    try:
        assert generate(parallel, prompts, params) == expected
        got_logprobs = logprob_rows(parallel, TINY_PROMPTS[0], with_logprobs)
    finally:
        parallel.shutdown()
    assert len(got_logprobs) == len(TINY_PROMPTS[0]) - 1 + 4
    assert [token for token, _ in got_logprobs] == [token for token, _ in expected_logprobs]
    assert [value for _, value in got_logprobs] == pytest.approx(
        [value for _, value in expected_logprobs], abs=1e-4
    )
    assert parallel.runner.kv_cache.shape[-3] == 1  # 2 KV heads split over 2 ranks
    assert parallel.runner.num_blocks == single.runner.num_blocks
    assert_workers_gone(parallel, 1)


def test_a_draft_model_runs_whole_on_rank_zero(make_engine: EngineFactory, tiny_qwen3: Path) -> None:
    """The target split over two ranks drafting for itself: the draft, whole on rank 0 with all its KV heads,
    runs forwards the workers never see, and the outputs are tp=1's without drafts."""
    prompts, params = TINY_PROMPTS, [GREEDY, GREEDY]
    expected = generate(make_engine(tiny_qwen3, 1, max_num_batched_tokens=16), prompts, params)
    drafting = SpeculativeConfig(num_speculative_tokens=3, method="draft_model", model=str(tiny_qwen3))
    parallel = make_engine(tiny_qwen3, 2, max_num_batched_tokens=16, speculative_config=drafting)
    try:
        assert generate(parallel, prompts, params) == expected
        stats = parallel.stats()
    finally:
        parallel.shutdown()
    assert stats.spec_accepted_tokens_total >= 0.9 * stats.spec_draft_tokens_total > 0
    assert parallel.runner.draft is not None
    assert (parallel.runner.kv_cache.shape[-3], parallel.runner.draft.kv_cache.shape[-3]) == (1, 2)
    assert_workers_gone(parallel, 1)


def test_tiny_qwen3_moe_tp2_matches_tp1(make_engine: EngineFactory, tiny_qwen3_moe: Path) -> None:
    # Every rank routes each token alike and sums its half of the chosen experts' features into one
    # all-reduce per layer.
    prompts, params = TINY_PROMPTS * 2, [GREEDY, GREEDY, SEEDED, SEEDED]
    expected = generate(make_engine(tiny_qwen3_moe, 1, max_num_batched_tokens=16), prompts, params)
    parallel = make_engine(tiny_qwen3_moe, 2, max_num_batched_tokens=16)
    try:
        assert generate(parallel, prompts, params) == expected
    finally:
        parallel.shutdown()


def test_tiny_classifier_tp2_matches_tp1(make_engine: EngineFactory, tiny_qwen3_classifier: Path) -> None:
    # Every rank loads the head (the checkpoint's `score`); rank 0 applies it to the pooled last token.
    expected = make_engine(tiny_qwen3_classifier, 1, max_num_batched_tokens=16).embed(TINY_PROMPTS)
    parallel = make_engine(tiny_qwen3_classifier, 2, max_num_batched_tokens=16)
    try:
        got = parallel.embed(TINY_PROMPTS)
    finally:
        parallel.shutdown()
    assert [len(logits) for logits in got] == [3, 3]
    for row, expected_row in zip(got, expected, strict=True):
        assert row == pytest.approx(expected_row, abs=1e-5)
    assert_workers_gone(parallel, 1)


def test_kv_heads_replicated_when_tp_exceeds_them(
    make_engine: EngineFactory, tiny_llama_one_kv_head: Path
) -> None:
    single, engine = tp_matches_tp1(
        make_engine, tiny_llama_one_kv_head, 2, TINY_PROMPTS * 2, [GREEDY, GREEDY, SEEDED, SEEDED]
    )
    assert engine.runner.kv_cache.shape[-3] == 1  # each rank keeps the single KV head
    # Both ranks store that head whole, so the same memory budget holds half the blocks.
    assert engine.runner.num_blocks == single.runner.num_blocks // 2
    assert_workers_gone(engine, 1)


def test_worker_crash_fails_the_engine_clearly(make_engine: EngineFactory, tiny_qwen3: Path) -> None:
    engine = make_engine(tiny_qwen3, 2)
    try:
        workers = engine.runner.workers
        assert workers is not None
        workers.processes[0].kill()
        workers.processes[0].join()
        for attempt in range(2):  # the step that finds the crash, and every step after it
            engine.add_request(f"after-crash-{attempt}", [1, 2, 3], GREEDY)
            [output] = engine.step()
            assert output.finished and output.finish_reason == "abort"
            assert output.error is not None and "worker rank 1 exited with code -9" in output.error
    finally:
        engine.shutdown()


def test_invalid_tensor_parallel_size_is_refused_before_any_worker_starts(model_path: Path) -> None:
    before = multiprocessing.active_children()
    with pytest.raises(
        ValueError, match=r"tensor_parallel_size 2 must divide the number of attention heads \(9\)"
    ):
        LLMEngine(EngineConfig(model=str(model_path), device="cpu", tensor_parallel_size=2))
    assert multiprocessing.active_children() == before
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        EngineConfig(model=str(model_path), tensor_parallel_size=0)


def test_lora_adapter_split_across_ranks(
    make_engine: EngineFactory, tiny_qwen3: Path, tmp_path: Path
) -> None:
    # Each rank keeps B's rows of its q/k/v heads and gate/up features, and A's columns of its o/down
    # inputs; a batch mixing the adapter and the base model generates what tp=1 does.
    adapter = write_random_adapter(tiny_qwen3, tmp_path / "adapter", seed=3, rank=4, weight_std=0.2)
    prompts, params = TINY_PROMPTS * 2, [GREEDY, GREEDY, SEEDED, SEEDED]
    names: list[str | None] = ["tiny", None, "tiny", None]
    single = make_engine(tiny_qwen3, 1, max_num_batched_tokens=16, lora_modules={"tiny": str(adapter)})
    expected = [result.token_ids for result in single.generate(prompts, params, lora_name=names)]
    assert expected != [result.token_ids for result in single.generate(prompts, params)]
    parallel = make_engine(tiny_qwen3, 2, max_num_batched_tokens=16, lora_modules={"tiny": str(adapter)})
    try:
        assert [
            result.token_ids for result in parallel.generate(prompts, params, lora_name=names)
        ] == expected
    finally:
        parallel.shutdown()


def test_runtime_lora_adapters_reach_every_rank(
    make_engine: EngineFactory, tiny_qwen3: Path, tmp_path: Path
) -> None:
    # Loaded at a request's arrival on rank 0 and the workers alike, and unloaded from both: with one slot,
    # "second" replaces "first", then "first" comes back; each generates what tp=1 does.
    adapters = {
        name: str(write_random_adapter(tiny_qwen3, tmp_path / name, seed=seed, rank=4, weight_std=0.2))
        for name, seed in (("first", 4), ("second", 5))
    }
    prompts, params = TINY_PROMPTS, GREEDY
    single = make_engine(tiny_qwen3, 1, max_num_batched_tokens=16, lora_modules=adapters)
    expected = {
        name: [r.token_ids for r in single.generate(prompts, params, lora_name=name)] for name in adapters
    }
    assert expected["first"] != expected["second"]
    parallel = make_engine(
        tiny_qwen3, 2, max_num_batched_tokens=16, allow_runtime_lora_updating=True, max_loras=1
    )
    try:
        for name in ("first", "second", "first"):
            results = parallel.generate(prompts, params, lora_name=name, lora_paths=adapters)
            assert [r.token_ids for r in results] == expected[name], name
    finally:
        parallel.shutdown()
