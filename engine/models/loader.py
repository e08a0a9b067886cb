"""Builds a CausalLM from a Hugging Face checkpoint directory (config.json + safetensors)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from engine.models.causal_lm import CausalLM
from engine.models.linear import Linear, MergedLinear, copy_checked
from engine.models.registry import resolve_architecture
from engine.models.spec import build_spec, read_json

# Checkpoint projections that live inside one of our fused layers: name -> (fused layer, row block).
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def load_model(model_path: str | Path, dtype: torch.dtype, device: torch.device | str) -> CausalLM:
    """Read config.json, pick the architecture from config["architectures"][0], allocate the model on
    `device` in `dtype`, and fill it from the memory-mapped safetensors files (converting dtype on copy)."""
    model_dir = Path(model_path)
    config = read_json(model_dir / "config.json")
    architecture = resolve_architecture(config)
    spec = build_spec(
        model_dir,
        config,
        architecture.flags(config),
        dtype,
        architecture.default_head_dim,
        architecture.always_sliding,
    )
    model = CausalLM(spec, torch.device(device))
    load_checkpoint(model, model_dir)
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


def checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of the checkpoint, read lazily from memory-mapped files."""
    for path in checkpoint_files(model_dir):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _ignored(name: str, model: CausalLM) -> bool:
    # Old exports carry rotary buffers (we build our own table), and some tied checkpoints also store
    # the LM head copy of the embedding.
    return name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and model.lm_head is None)


def load_checkpoint(model: CausalLM, model_dir: Path) -> None:
    """Copy every checkpoint tensor into its parameter; fail on shape mismatches, unknown tensors, and
    parameters the checkpoint leaves unset."""
    modules = dict(model.named_modules())
    loaded: set[tuple[str, int]] = set()
    unexpected: list[str] = []
    for name, tensor in checkpoint_tensors(model_dir):
        if _ignored(name, model):
            continue
        module_name, _, param_name = name.rpartition(".")
        parent, _, leaf = module_name.rpartition(".")
        shard = 0
        if leaf in _FUSED:
            fused_leaf, shard = _FUSED[leaf]
            module_name = f"{parent}.{fused_leaf}"
        module = modules.get(module_name)
        param = getattr(module, param_name, None)
        if not isinstance(param, torch.nn.Parameter):
            unexpected.append(name)
            continue
        if isinstance(module, MergedLinear):
            module.load_shard(param_name, shard, tensor, name)
        elif isinstance(module, Linear):
            module.load(param_name, tensor, name)
        else:
            copy_checked(param.data, tensor, name)
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
        shards = len(module.output_sizes) if isinstance(module, MergedLinear) else 1
        for param_name, _ in module.named_parameters(recurse=False):
            yield f"{module_name}.{param_name}", shards
