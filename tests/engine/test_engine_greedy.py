"""Greedy outputs equal Hugging Face transformers token for token, in every scheduling regime."""

from __future__ import annotations

import torch

from engine import LLMEngine, SamplingParams
from tests.engine.conftest import SYSTEM_MAX_TOKENS, SYSTEM_TEXT, EngineFactory, Reference


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens)


def assert_blocks_all_free(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert stats.kv_blocks_free == stats.kv_blocks_total, stats


def test_one_request_at_a_time(engine: LLMEngine, reference: Reference) -> None:
    for prompt, max_tokens, expected in zip(
        reference.prompts, reference.max_tokens, reference.outputs, strict=True
    ):
        [result] = engine.generate([prompt], greedy(max_tokens))
        assert result.token_ids == expected, engine.tokenizer.decode(prompt)
    assert_blocks_all_free(engine)


def test_all_at_once(engine: LLMEngine, reference: Reference) -> None:
    results = engine.generate(reference.prompts, [greedy(n) for n in reference.max_tokens])
    assert [r.token_ids for r in results] == reference.outputs
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert_blocks_all_free(engine)


def test_requests_arriving_while_others_decode(engine: LLMEngine, reference: Reference) -> None:
    tokens: dict[str, list[int]] = {}
    pending = list(range(len(reference.prompts)))
    steps = 0
    while pending or engine.has_unfinished_requests():
        if pending and steps % 3 == 0:  # a new request every third step joins a decoding batch
            index = pending.pop(0)
            engine.add_request(
                f"arrive-{index}", reference.prompts[index], greedy(reference.max_tokens[index])
            )
            tokens[f"arrive-{index}"] = []
        for output in engine.step():
            tokens[output.request_id].extend(output.new_token_ids)
        steps += 1
    assert [tokens[f"arrive-{i}"] for i in range(len(reference.prompts))] == reference.outputs
    assert_blocks_all_free(engine)


def test_preemption_keeps_outputs_identical(make_engine: EngineFactory, reference: Reference) -> None:
    # 6 blocks of 16 tokens: the longest request alone needs 4, all eight together need about 16.
    small = make_engine(num_kv_blocks=6, enable_prefix_caching=False)
    results = small.generate(reference.prompts, [greedy(n) for n in reference.max_tokens])
    assert [r.token_ids for r in results] == reference.outputs
    assert small.stats().num_preemptions > 0
    assert_blocks_all_free(small)


def test_prefix_cache_hits_keep_outputs_identical(engine: LLMEngine, reference: Reference) -> None:
    before = engine.stats().prefix_cache_hit_tokens
    # One after the other: the first request fills the cache, the others hit the shared system prompt.
    results = [engine.generate([prompt], greedy(SYSTEM_MAX_TOKENS))[0] for prompt in reference.system_prompts]
    assert [r.token_ids for r in results] == reference.system_outputs
    shared_blocks = len(engine.tokenizer.encode(SYSTEM_TEXT)) // 16
    assert shared_blocks >= 2
    assert all(r.num_cached_tokens >= shared_blocks * 16 for r in results[1:]), [
        r.num_cached_tokens for r in results
    ]
    assert engine.stats().prefix_cache_hit_tokens - before >= (len(results) - 1) * shared_blocks * 16
    # All at once again: every request now hits, and the batch still matches.
    again = engine.generate(reference.system_prompts, greedy(SYSTEM_MAX_TOKENS))
    assert [r.token_ids for r in again] == reference.system_outputs
    assert all(r.num_cached_tokens > 0 for r in again)


def test_chunked_prefill_with_small_budget(make_engine: EngineFactory, reference: Reference) -> None:
    chunked = make_engine(max_num_batched_tokens=32, num_kv_blocks=64)
    results = chunked.generate(reference.prompts, [greedy(n) for n in reference.max_tokens])
    assert [r.token_ids for r in results] == reference.outputs
    assert_blocks_all_free(chunked)


def test_a_bfloat16_kv_cache_halves_its_bytes_and_keeps_the_greedy_outputs(
    make_engine: EngineFactory, reference: Reference
) -> None:
    """kv_cache_dtype=bfloat16 under the float32 model (vLLM's --kv-cache-dtype): the same memory holds twice
    the blocks, and these short greedy continuations are still float32's, token for token, with prefix-cache
    hits (the system prompts) and decodes batched with prefills."""
    float32_block = 30 * 2 * 16 * 3 * 64 * 4  # layers x (K, V) x block_size x KV heads x head_dim x bytes
    memory = 32 * float32_block
    wide = make_engine(kv_cache_memory=memory)
    narrow = make_engine(kv_cache_memory=memory, kv_cache_dtype="bfloat16")
    assert narrow.runner.kv_cache.dtype == torch.bfloat16
    assert (wide.stats().kv_blocks_total, narrow.stats().kv_blocks_total) == (32, 64)
    results = narrow.generate(reference.prompts, [greedy(n) for n in reference.max_tokens])
    assert [r.token_ids for r in results] == reference.outputs
    system = narrow.generate(reference.system_prompts, greedy(SYSTEM_MAX_TOKENS))
    assert [r.token_ids for r in system] == reference.system_outputs
    assert_blocks_all_free(narrow)


def test_an_fp8_kv_cache_quarters_its_bytes(make_engine: EngineFactory, reference: Reference) -> None:
    """kv_cache_dtype=fp8 (e4m3) under the float32 model: four times the blocks in the same memory, requests
    batched with prefix-cache hits all finish and free their blocks, and each continuation starts with
    float32's first token. Later tokens may part from float32's: fp8 moves the logits several times more
    than a bfloat16 model does (tests/engine_models/test_smollm2.py checks them against HF over the same
    rounded K/V)."""
    float32_block = 30 * 2 * 16 * 3 * 64 * 4  # layers x (K, V) x block_size x KV heads x head_dim x bytes
    engine = make_engine(kv_cache_memory=32 * float32_block, kv_cache_dtype="fp8")
    assert engine.runner.kv_cache.dtype == torch.float8_e4m3fn
    assert engine.stats().kv_blocks_total == 128
    results = engine.generate(reference.prompts, [greedy(n) for n in reference.max_tokens])
    assert [len(r.token_ids) for r in results] == reference.max_tokens
    assert [r.token_ids[0] for r in results] == [tokens[0] for tokens in reference.outputs]
    for _ in range(2):  # the second time from the prefix cache
        system = engine.generate(reference.system_prompts, greedy(SYSTEM_MAX_TOKENS))
        assert [r.token_ids[0] for r in system] == [tokens[0] for tokens in reference.system_outputs]
    assert engine.stats().prefix_cache_hit_tokens > 0
    assert_blocks_all_free(engine)
