"""What the engine needs to know about a checkpoint, read once from its config.json and generation_config.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.models.rope import RopeConfig, parse_rope_config


@dataclass(frozen=True)
class ArchitectureFlags:
    """The switches that distinguish the supported families; each is read from config or fixed by family,
    never inferred from another flag."""

    # Per-head RMSNorm on q and k before rotary (Qwen3).
    qk_norm: bool
    # Biases on the q/k/v projections (always for Qwen2; `attention_bias` for Llama and Qwen3).
    qkv_bias: bool
    # Bias on the attention output projection (`attention_bias` for Llama and Qwen3; never for Qwen2).
    o_proj_bias: bool
    # Biases on gate/up/down projections (Llama `mlp_bias`).
    mlp_bias: bool
    # The LM head reuses the input embedding matrix (`tie_word_embeddings`).
    tie_embeddings: bool


@dataclass(frozen=True)
class MoESpec:
    """A sparse mixture-of-experts MLP (Qwen3-MoE): each token runs `top_k` of `num_experts` gated MLPs,
    their outputs weighted by the router's softmax."""

    num_experts: int
    top_k: int
    # Each expert's MLP width (config's moe_intermediate_size).
    intermediate_size: int
    # Renormalize the chosen experts' weights to sum to 1.
    norm_topk_prob: bool
    # Per layer: True where the MLP is the mixture, False where it is the dense MLP (mlp_only_layers,
    # decoder_sparse_step).
    sparse_layers: tuple[bool, ...]


@dataclass(frozen=True)
class ModelSpec:
    """Shapes and settings of a loaded model; the runner sizes the KV cache and batches from it."""

    # config["architectures"][0], e.g. "LlamaForCausalLM".
    architecture: str
    num_layers: int
    # Query heads and KV heads (GQA when they differ); num_heads % num_kv_heads == 0.
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    # Longest context the checkpoint was configured for (default max_model_len).
    max_position_embeddings: int
    # Weight and activation dtype chosen at load time (logits are always float32).
    dtype: torch.dtype
    # Token ids that end generation: config's eos_token_id followed by generation_config's, deduplicated.
    eos_token_ids: tuple[int, ...]
    rms_norm_eps: float
    flags: ArchitectureFlags
    rope: RopeConfig
    # Per layer: attention window in tokens (the query and the window - 1 tokens before it), or None for full.
    sliding_windows: tuple[int | None, ...]
    # The mixture of experts of an MoE family; None for dense ones.
    moe: MoESpec | None = None
    # A sequence classifier's (*ForSequenceClassification) classes: its head `score` is [num_labels,
    # hidden_size] and it has no LM head. None: a causal LM.
    num_labels: int | None = None


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _as_id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def read_eos_token_ids(model_dir: Path, config: dict[str, Any]) -> tuple[int, ...]:
    """EOS ids from config.json and generation_config.json; chat checkpoints often add their turn-end token
    only in the latter, and generation must stop on either."""
    ids = _as_id_list(config.get("eos_token_id"))
    generation_config = model_dir / "generation_config.json"
    if generation_config.exists():
        ids += _as_id_list(read_json(generation_config).get("eos_token_id"))
    return tuple(dict.fromkeys(ids))


def _required(config: dict[str, Any], key: str) -> Any:
    if config.get(key) is None:
        raise ValueError(f"config.json lacks {key!r}")
    return config[key]


def sliding_windows(config: dict[str, Any], num_layers: int, always_sliding: bool) -> tuple[int | None, ...]:
    """Per-layer windows. Qwen configs slide only when `use_sliding_window` is set and then only on the
    layers `layer_types` marks; Mistral slides on every layer whenever `sliding_window` is set."""
    window = config.get("sliding_window")
    if window is None or not (always_sliding or config.get("use_sliding_window", False)):
        return (None,) * num_layers
    layer_types = config.get("layer_types")
    if layer_types is None:
        first_sliding = 0 if always_sliding else int(_required(config, "max_window_layers"))
        layer_types = [
            "sliding_attention" if i >= first_sliding else "full_attention" for i in range(num_layers)
        ]
    if len(layer_types) != num_layers:
        raise ValueError(f"config.json lists {len(layer_types)} layer_types for {num_layers} layers")
    return tuple(int(window) if kind == "sliding_attention" else None for kind in layer_types)


def _experts(config: dict[str, Any]) -> tuple[int, int]:
    """(number of experts, experts per token); checkpoints name the first num_experts (Qwen) or
    num_local_experts (Mixtral, and transformers 5 for both)."""
    num_experts = int(config.get("num_experts") or _required(config, "num_local_experts"))
    top_k = int(_required(config, "num_experts_per_tok"))
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"num_experts_per_tok {top_k} must be in [1, {num_experts}] (the number of experts)")
    return num_experts, top_k


def qwen3_moe_spec(config: dict[str, Any], num_layers: int) -> MoESpec:
    """Qwen3-MoE's experts: layer i is sparse unless mlp_only_layers lists it, and when i + 1 is a multiple
    of decoder_sparse_step, as transformers reads them."""
    num_experts, top_k = _experts(config)
    dense = set(config.get("mlp_only_layers") or [])
    step = int(config.get("decoder_sparse_step") or 1)
    return MoESpec(
        num_experts=num_experts,
        top_k=top_k,
        intermediate_size=int(_required(config, "moe_intermediate_size")),
        norm_topk_prob=bool(config.get("norm_topk_prob", False)),
        sparse_layers=tuple(i not in dense and (i + 1) % step == 0 for i in range(num_layers)),
    )


def mixtral_moe_spec(config: dict[str, Any], num_layers: int) -> MoESpec:
    """Mixtral's experts: every layer sparse, each expert intermediate_size wide, the chosen experts'
    weights always renormalized."""
    num_experts, top_k = _experts(config)
    return MoESpec(
        num_experts=num_experts,
        top_k=top_k,
        intermediate_size=int(_required(config, "intermediate_size")),
        norm_topk_prob=True,
        sparse_layers=(True,) * num_layers,
    )


# How a family's config.json says what its experts are (None: a dense family).
MoEReader = Callable[[dict[str, Any], int], MoESpec]


def num_labels(config: dict[str, Any]) -> int:
    """A sequence classifier's classes, as transformers counts them: the entries of id2label, which it saves
    unless they are its default two, else num_labels, else those two."""
    id2label = config.get("id2label")
    count = len(id2label) if id2label else int(config.get("num_labels") or 2)
    if count < 1:
        raise ValueError(f"a sequence classifier needs at least one label; config.json says {count}")
    return count


def build_spec(
    model_dir: Path,
    config: dict[str, Any],
    flags: ArchitectureFlags,
    dtype: torch.dtype,
    default_head_dim: int | None,
    always_sliding: bool,
    read_experts: MoEReader | None = None,
    classifier: bool = False,
) -> ModelSpec:
    """ModelSpec from a raw config dict; `default_head_dim` is the family's value when config omits it
    (None: hidden_size // num_attention_heads); `read_experts` reads an MoE family's experts; `classifier`:
    the checkpoint's head is a sequence classifier's, not an LM head."""
    hidden_act = config.get("hidden_act", "silu")
    if hidden_act != "silu":
        raise ValueError(f"hidden_act {hidden_act!r} is not supported; only 'silu' is")
    hidden_size = int(_required(config, "hidden_size"))
    num_heads = int(_required(config, "num_attention_heads"))
    num_kv_heads = int(config.get("num_key_value_heads") or num_heads)
    if num_heads % num_kv_heads:
        raise ValueError(
            f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
        )
    head_dim = int(config.get("head_dim") or default_head_dim or hidden_size // num_heads)
    num_layers = int(_required(config, "num_hidden_layers"))
    max_positions = int(_required(config, "max_position_embeddings"))
    return ModelSpec(
        architecture=config["architectures"][0],
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        hidden_size=hidden_size,
        intermediate_size=int(_required(config, "intermediate_size")),
        vocab_size=int(_required(config, "vocab_size")),
        max_position_embeddings=max_positions,
        dtype=dtype,
        eos_token_ids=read_eos_token_ids(model_dir, config),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        flags=flags,
        rope=parse_rope_config(config, head_dim, max_positions),
        sliding_windows=sliding_windows(config, num_layers, always_sliding),
        moe=read_experts(config, num_layers) if read_experts is not None else None,
        num_labels=num_labels(config) if classifier else None,
    )
