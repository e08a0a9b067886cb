"""The whole engine on the default device (CUDA with the Triton kernels when present, else the CPU) gives
Hugging Face's greedy tokens for tiny random checkpoints, in every scheduling regime.

The SmolLM2 parity tests (tests/engine) cover the real model on the CPU; this file is what a GPU machine
runs without any weights travelling: the architecture flavours of TINY_CASES through the scheduler, the
paged cache and the sampler, in float32 so that greedy ties cannot differ between devices.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from engine import EngineConfig, LLMEngine, SamplingParams
from tests.engine_models.tiny_checkpoints import TINY_CASES, TinyCheckpoint, random_sequences

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [
    c for c in TINY_CASES if c.name in ("qwen3-yarn", "qwen2-sliding-layers", "llama-bias-llama3rope-sharded")
]
PROMPT_LENGTHS = [5, 60, 17, 33, 1, 48, 9, 24]
MAX_TOKENS = [6, 24, 16, 20, 7, 18, 22, 12]
BLOCK_SIZE = 4


@pytest.fixture(scope="session")
def byte_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A byte-level tokenizer with exactly the tiny models' 256 ids (no merges), saved once."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={symbol: i for i, symbol in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    path = tmp_path_factory.mktemp("byte-tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=alphabet[2]).save_pretrained(path)
    return path


def hf_greedy(checkpoint: TinyCheckpoint, prompt: list[int], max_tokens: int) -> list[int]:
    """Argmax continuation without any EOS handling (the engine runs with ignore_eos)."""
    tokens = list(prompt)
    with torch.inference_mode():
        for _ in range(max_tokens):
            logits = checkpoint.hf_model(torch.tensor([tokens])).logits[0, -1]
            tokens.append(int(logits.argmax()))
    return tokens[len(prompt) :]


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)


def build_engine(checkpoint: TinyCheckpoint, tokenizer: Path, **overrides: object) -> LLMEngine:
    settings: dict = {
        "model": str(checkpoint.path),
        "tokenizer": str(tokenizer),
        "device": DEVICE,
        "dtype": "float32",
        "max_model_len": 128,
        "block_size": BLOCK_SIZE,
        "num_kv_blocks": 256,
    }
    settings.update(overrides)
    return LLMEngine(EngineConfig(**settings))


def assert_idle(engine: LLMEngine) -> None:
    stats = engine.stats()
    assert not engine.has_unfinished_requests()
    assert stats.kv_blocks_free == stats.kv_blocks_total, stats


@pytest.mark.parametrize("tiny_checkpoint", CASES, ids=lambda case: case.name, indirect=True)
def test_engine_matches_hf_greedy_in_every_regime(tiny_checkpoint: TinyCheckpoint, byte_tokenizer: Path) -> None:
    vocab_size = tiny_checkpoint.hf_model.config.vocab_size
    prompts = random_sequences(PROMPT_LENGTHS, vocab_size, seed=11)
    expected = [hf_greedy(tiny_checkpoint, p, n) for p, n in zip(prompts, MAX_TOKENS, strict=True)]
    params = [greedy(n) for n in MAX_TOKENS]

    engine = build_engine(tiny_checkpoint, byte_tokenizer)
    assert str(engine.runner.device).startswith(DEVICE)
    one_by_one = [engine.generate([p], greedy(n))[0].token_ids for p, n in zip(prompts, MAX_TOKENS, strict=True)]
    assert one_by_one == expected, "one request at a time"
    assert [r.token_ids for r in engine.generate(prompts, params)] == expected, "all at once"
    if DEVICE == "cuda":  # decode steps replayed captured graphs
        assert engine.runner.decode_graphs is not None and engine.runner.decode_graphs.replays > 0

    # Requests arriving every other step join a batch that is already decoding.
    tokens: dict[int, list[int]] = {}
    pending = list(range(len(prompts)))
    step = 0
    while pending or engine.has_unfinished_requests():
        if pending and step % 2 == 0:
            index = pending.pop(0)
            engine.add_request(f"arrive-{index}", prompts[index], params[index])
            tokens[index] = []
        for output in engine.step():
            tokens[int(output.request_id.removeprefix("arrive-"))].extend(output.new_token_ids)
        step += 1
    assert [tokens[i] for i in range(len(prompts))] == expected, "arrivals while decoding"

    # A shared prefix of several full blocks: later requests reuse its cached blocks.
    prefix = random_sequences([4 * BLOCK_SIZE + 2], vocab_size, seed=12)[0]
    shared = [prefix + p for p in prompts[:4]]
    shared_expected = [hf_greedy(tiny_checkpoint, p, 5) for p in shared]
    results = [engine.generate([p], greedy(5))[0] for p in shared]
    assert [r.token_ids for r in results] == shared_expected, "prefix-cache hits"
    assert all(r.num_cached_tokens >= 4 * BLOCK_SIZE for r in results[1:]), [r.num_cached_tokens for r in results]
    assert_idle(engine)
    engine.shutdown()

    # A token budget of 8 per step: the longer prompts prefill in chunks between decodes.
    chunked = build_engine(tiny_checkpoint, byte_tokenizer, max_num_batched_tokens=8, enable_prefix_caching=False)
    assert [r.token_ids for r in chunked.generate(prompts, params)] == expected, "chunked prefill"
    assert_idle(chunked)
    chunked.shutdown()

    # 24 blocks of 4 tokens: the longest request alone needs 21, the first three together 32.
    small = build_engine(tiny_checkpoint, byte_tokenizer, num_kv_blocks=24, enable_prefix_caching=False)
    assert [r.token_ids for r in small.generate(prompts, params)] == expected, "preemption"
    assert small.stats().num_preemptions > 0
    assert_idle(small)
    small.shutdown()
