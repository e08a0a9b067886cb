"""Supported checkpoint architectures: each maps a config.json to its explicit ArchitectureFlags."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from engine.models.spec import ArchitectureFlags, MoEReader, mixtral_moe_spec, qwen3_moe_spec


@dataclass(frozen=True)
class Architecture:
    """How one `architectures` entry of config.json is read."""

    # Reads the family's flags from config.json (fixed ones are constants here, not config lookups).
    flags: Callable[[dict[str, Any]], ArchitectureFlags]
    # head_dim when config.json omits it; None means hidden_size // num_attention_heads.
    default_head_dim: int | None
    # Every layer uses `sliding_window` when set (Mistral), instead of Qwen's use_sliding_window + layer_types.
    always_sliding: bool
    # An MoE family's experts from config.json (engine.models.moe); None: dense MLPs.
    read_experts: MoEReader | None = None
    # Checkpoint name parts this family spells its own way -> ours (Mixtral's block_sparse_moe, w1, w2, w3).
    renamed: dict[str, str] = field(default_factory=dict)
    # A *ForSequenceClassification checkpoint: the family's decoder under a classification head `score`
    # [num_labels, hidden] instead of an LM head (reward models, classifiers, cross-encoder rerankers).
    classifier: bool = False


def _tied(config: dict[str, Any]) -> bool:
    return bool(config.get("tie_word_embeddings", False))


def _llama_flags(config: dict[str, Any]) -> ArchitectureFlags:
    attention_bias = bool(config.get("attention_bias", False))
    return ArchitectureFlags(
        qk_norm=False,
        qkv_bias=attention_bias,
        o_proj_bias=attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
        tie_embeddings=_tied(config),
    )


def _qwen2_flags(config: dict[str, Any]) -> ArchitectureFlags:
    return ArchitectureFlags(
        qk_norm=False, qkv_bias=True, o_proj_bias=False, mlp_bias=False, tie_embeddings=_tied(config)
    )


def _qwen3_flags(config: dict[str, Any]) -> ArchitectureFlags:
    attention_bias = bool(config.get("attention_bias", False))
    return ArchitectureFlags(
        qk_norm=True,
        qkv_bias=attention_bias,
        o_proj_bias=attention_bias,
        mlp_bias=False,
        tie_embeddings=_tied(config),
    )


def _mistral_flags(config: dict[str, Any]) -> ArchitectureFlags:
    return ArchitectureFlags(
        qk_norm=False, qkv_bias=False, o_proj_bias=False, mlp_bias=False, tie_embeddings=_tied(config)
    )


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture(_llama_flags, default_head_dim=None, always_sliding=False),
    "MistralForCausalLM": Architecture(_mistral_flags, default_head_dim=None, always_sliding=True),
    "Qwen2ForCausalLM": Architecture(_qwen2_flags, default_head_dim=None, always_sliding=False),
    "Qwen3ForCausalLM": Architecture(_qwen3_flags, default_head_dim=128, always_sliding=False),
    # Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B / 480B-A35B: Qwen3's attention, experts' MLPs.
    "Qwen3MoeForCausalLM": Architecture(
        _qwen3_flags, default_head_dim=128, always_sliding=False, read_experts=qwen3_moe_spec
    ),
    # Mixtral-8x7B / 8x22B: Mistral's attention, experts of w1 (gate), w3 (up) and w2 (down).
    "MixtralForCausalLM": Architecture(
        _mistral_flags,
        default_head_dim=None,
        always_sliding=True,
        read_experts=mixtral_moe_spec,
        renamed={"block_sparse_moe": "mlp", "w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"},
    ),
}
# The same decoders as sequence classifiers, as transformers (and vLLM) name them.
ARCHITECTURES.update(
    {
        f"{family}ForSequenceClassification": replace(ARCHITECTURES[f"{family}ForCausalLM"], classifier=True)
        for family in ("Llama", "Mistral", "Qwen2", "Qwen3")
    }
)


def resolve_architecture(config: dict[str, Any]) -> Architecture:
    """The registry entry for config["architectures"][0]; ValueError naming it and the supported ones."""
    names = config.get("architectures") or []
    name = names[0] if names else None
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unsupported model architecture {name!r}; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[name]
