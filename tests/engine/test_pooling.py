"""Embeddings (engine.pooling): every pooling type equals Hugging Face transformers' final hidden states
pooled the same way, across chunked prefills, preemptions and batches shared with generation; prefix
caching serves only what it may; requests the engine cannot embed are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from engine import InvalidRequestError, LLMEngine, PoolingParams, SamplingParams
from engine.pooling import default_pooling_type
from tests.engine.conftest import EngineFactory, Reference, torch_threads
from tests.lora_adapter import write_random_adapter

TEXTS = [
    "The capital of France is Paris.",
    "A long passage about bridges, rivers and the towns built where one meets the other. " * 4,
    "hi",
]
# A step budget smaller than the long text: its prefill runs in several chunks.
STEP_BUDGET = 32
# Generations beside embeddings in the preemption test.
NUM_GENERATIONS = 2


def pooled(hidden: torch.Tensor, pooling_type: str) -> torch.Tensor:
    """hidden [T, H] pooled as the engine's PoolingParams names it (before normalization)."""
    return {"LAST": hidden[-1], "MEAN": hidden.mean(0), "CLS": hidden[0]}[pooling_type]


def hf_hidden(model_dir: Path, prompts: list[list[int]], adapter: Path | None = None) -> list[torch.Tensor]:
    """Hugging Face's final hidden states (after the last norm) of each prompt, float32."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel  # imported on use: see tests/lora_adapter.py

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    with torch.inference_mode(), torch_threads(1):
        return [model(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0] for prompt in prompts]


@pytest.fixture(scope="module")
def prompts(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    built = [tokenizer.encode(text) for text in TEXTS]
    assert len(built[1]) > 2 * STEP_BUDGET
    return built


@pytest.fixture(scope="module")
def hidden(model_dir: Path, prompts: list[list[int]]) -> list[torch.Tensor]:
    return hf_hidden(model_dir, prompts)


@pytest.fixture(scope="module")
def chunking_engine(make_engine: EngineFactory) -> LLMEngine:
    return make_engine(max_num_batched_tokens=STEP_BUDGET, kv_cache_memory=16 << 20)


@pytest.mark.parametrize("pooling_type", ["LAST", "MEAN", "CLS"])
def test_pooling_types_match_hugging_face(
    chunking_engine: LLMEngine, prompts: list[list[int]], hidden: list[torch.Tensor], pooling_type: str
) -> None:
    # Each prompt twice in one batch: the second copy may hit the first's cached blocks (LAST may use them).
    embeddings = chunking_engine.embed(prompts + prompts, PoolingParams(pooling_type=pooling_type))
    for index, embedding in enumerate(embeddings):
        expected = F.normalize(pooled(hidden[index % len(prompts)], pooling_type), dim=-1)
        torch.testing.assert_close(torch.tensor(embedding), expected, atol=1e-4, rtol=0)


def test_raw_and_matryoshka_vectors(chunking_engine: LLMEngine, prompts: list[list[int]], hidden: list[torch.Tensor]) -> None:
    [raw] = chunking_engine.embed(prompts[:1], PoolingParams(normalize=False))
    torch.testing.assert_close(torch.tensor(raw), hidden[0][-1], atol=1e-4, rtol=1e-4)
    [short] = chunking_engine.embed(prompts[:1], PoolingParams(dimensions=64))
    torch.testing.assert_close(torch.tensor(short), F.normalize(hidden[0][-1][:64], dim=-1), atol=1e-4, rtol=0)


def test_prefix_cache_serves_last_token_pooling_only(
    chunking_engine: LLMEngine, prompts: list[list[int]], hidden: list[torch.Tensor]
) -> None:
    long_prompt = prompts[1]
    chunking_engine.embed([long_prompt])  # its full blocks are cached now
    before = chunking_engine.stats().prefix_cache_hit_tokens
    [last] = chunking_engine.embed([long_prompt], PoolingParams(pooling_type="LAST"))
    after_last = chunking_engine.stats().prefix_cache_hit_tokens
    [mean] = chunking_engine.embed([long_prompt], PoolingParams(pooling_type="MEAN"))
    assert after_last - before >= 48  # three full blocks of the long prompt
    assert chunking_engine.stats().prefix_cache_hit_tokens == after_last  # MEAN reads every row
    torch.testing.assert_close(torch.tensor(last), F.normalize(hidden[1][-1], dim=-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(mean), F.normalize(hidden[1].mean(0), dim=-1), atol=1e-4, rtol=0)


def test_embeddings_beside_generation_with_preemption(
    make_engine: EngineFactory, reference: Reference, prompts: list[list[int]], hidden: list[torch.Tensor]
) -> None:
    # 5 blocks of 16 tokens. The MEAN embeddings (priority 1) join the generations (priority 0) with the
    # budget they leave and are the first preempted when blocks run out: the long one (5 blocks alone)
    # is preempted after some of its chunks, recomputed from its first token, and its sum must start over.
    engine = make_engine(num_kv_blocks=5, max_num_batched_tokens=STEP_BUDGET, enable_prefix_caching=False)
    generations = list(zip(reference.prompts, reference.max_tokens, strict=True))[:NUM_GENERATIONS]
    for index, (prompt, max_tokens) in enumerate(generations):
        engine.add_request(f"generate-{index}", prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens))
    for index, prompt in enumerate(prompts):
        engine.add_request(f"embed-{index}", prompt, PoolingParams(pooling_type="MEAN"), priority=1)
    embedding_requests = [request for request in engine.scheduler.waiting if request.pooling is not None]
    tokens: dict[str, list[int]] = {}
    embeddings: dict[str, list[float]] = {}
    restarted_after_progress = False
    while engine.has_unfinished_requests():
        progress = {request.request_id: request.num_computed_tokens for request in embedding_requests}
        for output in engine.step():
            tokens.setdefault(output.request_id, []).extend(output.new_token_ids)
            if output.embedding is not None:
                assert output.finished and output.finish_reason == "stop" and not output.new_token_ids
                assert output.num_prompt_tokens == len(prompts[int(output.request_id.split("-")[1])])
                embeddings[output.request_id] = output.embedding
        restarted_after_progress |= any(
            0 < progress[request.request_id] and request.num_computed_tokens < progress[request.request_id]
            for request in embedding_requests
        )
    assert restarted_after_progress
    assert [tokens[f"generate-{i}"] for i in range(NUM_GENERATIONS)] == reference.outputs[:NUM_GENERATIONS]
    for index in range(len(prompts)):
        expected = F.normalize(hidden[index].mean(0), dim=-1)
        torch.testing.assert_close(torch.tensor(embeddings[f"embed-{index}"]), expected, atol=1e-4, rtol=0)
    assert engine.stats().num_preemptions > 0
    assert engine.stats().kv_blocks_free == engine.stats().kv_blocks_total


def test_lora_adapter_applies_to_embeddings(make_engine: EngineFactory, model_dir: Path, prompts: list[list[int]], tmp_path: Path) -> None:
    adapter = write_random_adapter(model_dir, tmp_path / "adapter", seed=5)
    engine = make_engine(lora_modules={"tuned": str(adapter)})
    [embedding] = engine.embed(prompts[:1], lora_name="tuned")
    [tuned] = hf_hidden(model_dir, prompts[:1], adapter)
    torch.testing.assert_close(torch.tensor(embedding), F.normalize(tuned[-1], dim=-1), atol=1e-4, rtol=0)


def test_refused_requests(make_engine: EngineFactory) -> None:
    engine = make_engine(max_model_len=64)
    # A whole context of input: a generation needs room for one token, an embedding does not.
    [embedding] = engine.embed([list(range(10, 74))])
    assert len(embedding) == 576
    with pytest.raises(InvalidRequestError, match="the input has 65 tokens; max_model_len is 64"):
        engine.add_request("long", list(range(10, 75)), PoolingParams())
    with pytest.raises(InvalidRequestError, match="parameter 'dimensions' is 1000, more than the model's embedding size 576"):
        engine.add_request("wide", [10, 11], PoolingParams(dimensions=1000))
    with pytest.raises(InvalidRequestError, match="the prompt is empty"):
        engine.add_request("empty", [], PoolingParams())
    assert not engine.has_unfinished_requests()
    with pytest.raises(ValueError, match="pooling_type must be one of LAST, MEAN, CLS"):
        PoolingParams(pooling_type="max")
    with pytest.raises(ValueError, match="dimensions must be >= 1"):
        PoolingParams(dimensions=0)


def test_default_pooling_from_sentence_transformers_config(tmp_path: Path) -> None:
    assert default_pooling_type(tmp_path) == "LAST"
    (tmp_path / "1_Pooling").mkdir()
    config = {"word_embedding_dimension": 576, "pooling_mode_mean_tokens": True, "pooling_mode_lasttoken": False}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert default_pooling_type(tmp_path) == "MEAN"
