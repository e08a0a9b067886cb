"""Tiny random-weight Hugging Face checkpoints, saved once per session, and their HF reference models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
)

SMALL = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=256,
    max_position_embeddings=128,
    eos_token_id=2,
)


@dataclass(frozen=True)
class TinyCase:
    """One tiny checkpoint flavour: an HF config plus how it is saved."""

    name: str
    make_config: Callable[[], PretrainedConfig]
    # save_pretrained's max_shard_size: a small value forces the sharded layout with an index file.
    max_shard_size: str | None = None


TINY_CASES = [
    TinyCase("llama-tied", lambda: LlamaConfig(**SMALL, tie_word_embeddings=True)),
    TinyCase(
        "llama-bias-llama3rope-sharded",
        lambda: LlamaConfig(
            **SMALL,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        max_shard_size="60KB",
    ),
    TinyCase("qwen2-sharded", lambda: Qwen2Config(**SMALL), max_shard_size="60KB"),
    TinyCase("qwen2-tied", lambda: Qwen2Config(**SMALL, tie_word_embeddings=True)),
    TinyCase(
        "qwen3-yarn",
        lambda: Qwen3Config(
            **SMALL,
            head_dim=32,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1000.0,
                "factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
    ),
    TinyCase("qwen3-bias-tied", lambda: Qwen3Config(**SMALL, head_dim=16, attention_bias=True, tie_word_embeddings=True)),
    TinyCase("mistral-sliding", lambda: MistralConfig(**SMALL, sliding_window=5)),
]


def randomize(model: PreTrainedModel, seed: int) -> None:
    """Replace HF's init (zero biases, unit norms) so every parameter, biases included, matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)


@dataclass
class TinyCheckpoint:
    path: Path
    hf_model: PreTrainedModel


@pytest.fixture(scope="session", params=TINY_CASES, ids=lambda case: case.name)
def tiny_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoint:
    case: TinyCase = request.param
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(case.make_config(), attn_implementation="eager")
    randomize(hf_model, seed=1)
    path = tmp_path_factory.mktemp(case.name)
    if case.max_shard_size is None:
        hf_model.save_pretrained(path)
    else:
        hf_model.save_pretrained(path, max_shard_size=case.max_shard_size)
    return TinyCheckpoint(path, hf_model.eval())
