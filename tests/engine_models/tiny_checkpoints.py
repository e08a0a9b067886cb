"""Tiny random-weight Hugging Face checkpoint flavours used as references for our models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
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


# A Qwen3-MoE on SMALL's dimensions: 8 experts of 32 features, 2 chosen per token.
MOE = dict(SMALL, head_dim=16, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2)


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
    # Layer 0 attends fully, layer 1 through a 4-token window.
    TinyCase(
        "qwen2-sliding-layers",
        lambda: Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    ),
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
    TinyCase(
        "qwen3-bias-tied",
        lambda: Qwen3Config(**SMALL, head_dim=16, attention_bias=True, tie_word_embeddings=True),
    ),
    TinyCase("mistral-sliding", lambda: MistralConfig(**SMALL, sliding_window=5)),
    # Layer 0 a mixture of 8 experts (2 per token, renormalized), layer 1 the dense MLP.
    TinyCase("qwen3-moe", lambda: Qwen3MoeConfig(**MOE, norm_topk_prob=True, mlp_only_layers=[1])),
    # 4 experts of SMALL's intermediate size, 2 per token, a 5-token window on every layer.
    TinyCase(
        "mixtral-sliding",
        lambda: MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2, sliding_window=5),
    ),
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
    # Saved as several shards plus model.safetensors.index.json.
    sharded: bool


def hf_logits(checkpoint: TinyCheckpoint, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return checkpoint.hf_model(torch.tensor([tokens])).logits[0].float()


def random_sequences(lengths: list[int], vocab_size: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in lengths]


def save_classifier(config: PretrainedConfig, path: Path) -> PreTrainedModel:
    """A random *ForSequenceClassification model of `config` (its `architectures` and labels set by
    transformers) saved to `path`; returned in eval mode as the reference."""
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
    randomize(model, seed=1)
    model.save_pretrained(path)
    return model.eval()
