"""Tensor-parallel fixtures: tiny random checkpoints and engines built with a given tensor_parallel_size.

Every rank runs one torch thread: tp=3 on two shared cores is already three busy processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen3Config, Qwen3MoeConfig

from engine import EngineConfig, LLMEngine
from tests.engine.conftest import torch_threads
from tests.engine_models.tiny_checkpoints import MOE, SMALL, randomize, save_classifier

EngineFactory = Callable[..., LLMEngine]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def save_tiny(config: PretrainedConfig, path: Path) -> Path:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    randomize(model, seed=1)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 query heads, 2 KV heads (split at tp=2), q/k norm, attention biases, tied embeddings."""
    config = Qwen3Config(**SMALL, head_dim=16, attention_bias=True, tie_word_embeddings=True)
    return save_tiny(config, tmp_path_factory.mktemp("tp-qwen3"))


@pytest.fixture(scope="session")
def tiny_qwen3_moe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both layers mixtures of 8 experts, 2 per token (each rank holds half of every expert)."""
    return save_tiny(Qwen3MoeConfig(**MOE), tmp_path_factory.mktemp("tp-qwen3-moe"))


@pytest.fixture(scope="session")
def tiny_qwen3_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Qwen3ForSequenceClassification of 3 labels: the decoder split as tiny_qwen3's, the head whole on
    every rank."""
    path = tmp_path_factory.mktemp("tp-qwen3-classifier")
    save_classifier(Qwen3Config(**SMALL, head_dim=16, attention_bias=True, num_labels=3, pad_token_id=None), path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_one_kv_head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 KV head (replicated at tp=2), all biases, an untied LM head, and a vocabulary of 255 that two ranks
    cannot split evenly (the last slice is padded)."""
    settings = {**SMALL, "num_key_value_heads": 1, "vocab_size": 255}
    config = LlamaConfig(**settings, attention_bias=True, mlp_bias=True, tie_word_embeddings=False)
    return save_tiny(config, tmp_path_factory.mktemp("tp-llama-1kv"))


@pytest.fixture(scope="session")
def make_engine(model_path: Path) -> EngineFactory:
    """LLMEngine on the CPU in float32; tiny checkpoints borrow SmolLM2's tokenizer (eos id 2 in both)."""

    def build(model: Path, tensor_parallel_size: int, **overrides: object) -> LLMEngine:
        settings: dict = {
            "model": str(model),
            "tokenizer": str(model_path),
            "device": "cpu",
            "dtype": "float32",
            "max_model_len": 128,
            "kv_cache_memory": 4 << 20,
            "tensor_parallel_size": tensor_parallel_size,
        }
        settings.update(overrides)
        return LLMEngine(EngineConfig(**settings))

    return build
