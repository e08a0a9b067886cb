"""Builds a CausalLM (or one tensor-parallel rank's shard of it) from a Hugging Face checkpoint directory
(config.json + safetensors, single or sharded)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from engine.distributed import TensorParallelGroup
from engine.models.causal_lm import CausalLM
from engine.models.layers import Attention
from engine.models.linear import (
    FUSED_PROJECTIONS,
    SHARDED_LAYERS,
    CheckpointTensor,
    ColumnParallelLinear,
    load_slice,
)
from engine.models.registry import ARCHITECTURES, resolve_architecture
from engine.models.sharding import check_tensor_parallel
from engine.models.spec import ModelSpec, build_spec, read_json


def read_spec(model_path: str | Path, dtype: torch.dtype) -> ModelSpec:
    """The ModelSpec of a checkpoint directory, from config.json alone (no weights are read)."""
    model_dir = Path(model_path)
    config = read_json(model_dir / "config.json")
    architecture = resolve_architecture(config)
    return build_spec(
        model_dir,
        config,
        architecture.flags(config),
        dtype,
        architecture.default_head_dim,
        architecture.always_sliding,
        architecture.read_experts,
        architecture.classifier,
    )


def load_model(
    model_path: str | Path,
    dtype: torch.dtype,
    device: torch.device | str,
    group: TensorParallelGroup | None = None,
) -> CausalLM:
    """Read config.json, pick the architecture from config["architectures"][0], allocate the model (this
    rank's shard of it under tensor parallelism) on `device` in `dtype`, and fill it from the
    memory-mapped safetensors files, reading only this rank's slices and converting dtype on copy."""
    group = group or TensorParallelGroup.single()
    spec = read_spec(model_path, dtype)
    check_tensor_parallel(spec, group.size)
    model = CausalLM(spec, torch.device(device), group)
    load_checkpoint(model, Path(model_path))
    return model.eval()


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards listed by model.safetensors.index.json, or the
    single model.safetensors."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = read_json(index)["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    single = model_dir / "model.safetensors"
    if single.exists():
        return [single]
    raise FileNotFoundError(f"{model_dir} has neither model.safetensors nor model.safetensors.index.json")


def checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, CheckpointTensor]]:
    """(name, lazy slice) for every tensor of the checkpoint; only the parts a layer indexes are read from
    the memory-mapped files."""
    for path in checkpoint_files(model_dir):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_slice(name)


def _ignored(name: str, model: CausalLM) -> bool:
    # Old exports carry rotary buffers (we build our own table), and some tied checkpoints also store
    # the LM head copy of the embedding (a classifier's lm_head.weight is no such copy: it is refused).
    return (
        name.endswith("rotary_emb.inv_freq")
        or (name == "lm_head.weight" and model.lm_head is None and model.score is None)
        or name.endswith(_UNUSED_SCALES)
    )


# A layer's fp8 KV cache scales as checkpoints name them (vLLM reads the same): compressed-tensors /
# llm-compressor's self_attn.{k,v}_scale (some exports nest them under self_attn.attn), ModelOpt's
# k_proj.k_scale / v_proj.v_scale, AutoFP8's single self_attn.kv_scale, and older exports' k_proj / v_proj
# output_scale. The attribute(s) of Attention each sets.
_KV_SCALES = {
    "self_attn.k_scale": ("k_scale",),
    "self_attn.v_scale": ("v_scale",),
    "self_attn.attn.k_scale": ("k_scale",),
    "self_attn.attn.v_scale": ("v_scale",),
    "self_attn.k_proj.k_scale": ("k_scale",),
    "self_attn.v_proj.v_scale": ("v_scale",),
    "self_attn.kv_scale": ("k_scale", "v_scale"),
    "self_attn.k_proj.output_scale": ("k_scale",),
    "self_attn.v_proj.output_scale": ("v_scale",),
}
# Scales of fp8 attention arithmetic (the query's, the probabilities'), which some of those checkpoints carry
# too: this engine attends in the model's dtype, so they have nothing to scale (vLLM skips them as well).
_UNUSED_SCALES = ("self_attn.q_scale", "self_attn.attn.q_scale", "self_attn.prob_scale", "self_attn.attn.prob_scale")


def _load_kv_scale(name: str, source: CheckpointTensor, modules: dict[str, torch.nn.Module]) -> bool:
    """Set an attention layer's k_scale / v_scale from a scale tensor; False when `name` names none."""
    suffix = next((suffix for suffix in _KV_SCALES if name.endswith("." + suffix)), None)
    if suffix is None:
        return False
    attention = modules.get(name[: -len(suffix)] + "self_attn")
    if not isinstance(attention, Attention):
        return False
    values = source[...].flatten()
    # One scale for the layer (per tensor), whatever the tensor parallel rank.
    if values.numel() != 1 or not math.isfinite(scale := float(values[0])) or scale <= 0:
        raise ValueError(f"checkpoint tensor {name} must hold one positive finite KV cache scale")
    for attribute in _KV_SCALES[suffix]:
        getattr(attention, attribute).fill_(scale)
    attention.kv_scaled = True
    return True


def load_checkpoint(model: CausalLM, model_dir: Path) -> None:
    """Copy every checkpoint tensor (this rank's slice of it) into its parameter, and fp8 KV cache scales
    into their attention layers; fail on shape mismatches, unknown tensors, and parameters the
    checkpoint leaves unset."""
    modules = dict(model.named_modules())
    loaded: set[tuple[str, int]] = set()
    unexpected: list[str] = []
    renamed = ARCHITECTURES[model.spec.architecture].renamed
    for checkpoint_name, source in checkpoint_tensors(model_dir):
        # Our module path of the tensor; messages name it as the checkpoint does.
        name = ".".join(renamed.get(part, part) for part in checkpoint_name.split("."))
        if _ignored(name, model) or _load_kv_scale(name, source, modules):
            continue
        module_name, _, param_name = name.rpartition(".")
        parent, _, leaf = module_name.rpartition(".")
        shard = 0
        if leaf in FUSED_PROJECTIONS:
            fused_leaf, shard = FUSED_PROJECTIONS[leaf]
            module_name = f"{parent}.{fused_leaf}"
        module = modules.get(module_name)
        param = getattr(module, param_name, None)
        if not isinstance(param, torch.nn.Parameter):
            unexpected.append(checkpoint_name)
            continue
        if isinstance(module, SHARDED_LAYERS):
            module.load(param_name, shard, source, checkpoint_name)
        else:
            load_slice(param.data, source, checkpoint_name)
        loaded.add((f"{module_name}.{param_name}", shard))
    if unexpected:
        raise ValueError(
            f"checkpoint tensors the {model.spec.architecture} model does not have: {unexpected[:8]}"
        )
    missing = [
        name for name, count in _expected_loads(model) if any((name, i) not in loaded for i in range(count))
    ]
    if missing:
        raise ValueError(f"checkpoint in {model_dir} lacks tensors for: {missing[:8]}")


def _expected_loads(model: CausalLM) -> Iterator[tuple[str, int]]:
    """(parameter name, number of checkpoint tensors that fill it) for every parameter."""
    for module_name, module in model.named_modules():
        shards = len(module.output_sizes) if isinstance(module, ColumnParallelLinear) else 1
        for param_name, _ in module.named_parameters(recurse=False):
            yield f"{module_name}.{param_name}", shards
