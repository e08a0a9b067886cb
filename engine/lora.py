"""LoRA adapters as PEFT saves them (adapter_config.json + adapter_model.safetensors), read for serving.

An adapter changes some of the base model's projections W (out x in) into W + s * B @ A, with A (r x in),
B (out x r) and s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA). The engine never merges them into
W: every request picks its own adapter or none, so the low-rank product is added per request
(engine.models.lora). What this reads: the projections of the decoder layers (q, k, v, o, gate, up,
down), plain LoRA. Refused with a message naming the reason: DoRA, trained biases (PEFT's lora_bias
too), modules_to_save, per-module rank or alpha patterns, factors stored transposed (fan_in_fan_out),
embedding or LM head adapters, pickled .bin weights.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

# Projections an adapter may target, by their checkpoint names.
SUPPORTED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# PEFT's name for one factor of one projection: base_model.model.<the base checkpoint's name>.lora_A.weight
_TENSOR_NAME = re.compile(
    r"^base_model\.model\.model\.(layers\.\d+\.(?:self_attn|mlp)\.(\w+))\.lora_([AB])\.weight$"
)


@dataclass(frozen=True)
class LoRAWeights:
    """One projection's update: A (rank x in) and B (out x rank), B already multiplied by the scaling."""

    a: torch.Tensor
    b: torch.Tensor


@dataclass
class LoRAAdapter:
    name: str
    path: Path
    rank: int
    # By the base checkpoint's module name without its `model.` prefix, e.g. "layers.3.self_attn.q_proj".
    weights: dict[str, LoRAWeights]


def load_adapter(name: str, path: str | Path) -> LoRAAdapter:
    """Read and check a PEFT LoRA adapter directory; the weights stay float32 on the CPU until they are
    attached to a model (engine.models.lora.attach_adapters), which checks their shapes against it."""
    directory = Path(path)
    config = _read_config(name, directory)
    weights_file = directory / "adapter_model.safetensors"
    if not weights_file.is_file():
        found = "adapter_model.bin (pickled; re-save it with safe_serialization=True)" if (
            directory / "adapter_model.bin"
        ).is_file() else "no weights file"
        raise ValueError(f"LoRA adapter {name!r}: {directory} has {found}, not adapter_model.safetensors")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(weights_file, framework="pt", device="cpu") as f:
        for tensor_name in f.keys():
            match = _TENSOR_NAME.match(tensor_name)
            if match is None or match.group(2) not in SUPPORTED_TARGETS:
                raise ValueError(
                    f"LoRA adapter {name!r}: tensor {tensor_name} is not a LoRA factor of a supported projection "
                    f"({', '.join(SUPPORTED_TARGETS)})"
                )
            factors.setdefault(match.group(1), {})[match.group(3)] = f.get_tensor(tensor_name).float()
    if not factors:
        raise ValueError(f"LoRA adapter {name!r}: {weights_file} holds no LoRA weights")
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    weights = {}
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise ValueError(f"LoRA adapter {name!r}: {module} has lora_{''.join(pair)} without its other factor")
        a, b = pair["A"], pair["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise ValueError(
                f"LoRA adapter {name!r}: {module} has A {tuple(a.shape)} and B {tuple(b.shape)}, not rank {rank}"
            )
        weights[module] = LoRAWeights(a, b * scaling)
    return LoRAAdapter(name, directory, rank, weights)


def _read_config(name: str, directory: Path) -> dict[str, Any]:
    config_file = directory / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except OSError as error:
        raise ValueError(f"LoRA adapter {name!r}: cannot read {config_file}: {error.strerror}") from None
    except ValueError as error:
        raise ValueError(f"LoRA adapter {name!r}: {config_file} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"LoRA adapter {name!r}: {config_file} is not a JSON object")
    refusals = {
        "peft_type": config.get("peft_type", "LORA") != "LORA",
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        # A bias on B (PEFT's lora_bias) or factors stored transposed (GPT-2's Conv1D layers).
        "lora_bias": bool(config.get("lora_bias")),
        "fan_in_fan_out": bool(config.get("fan_in_fan_out")),
        "modules_to_save": bool(config.get("modules_to_save")),
        "rank_pattern": bool(config.get("rank_pattern")),
        "alpha_pattern": bool(config.get("alpha_pattern")),
    }
    refused = [f"{key}={config.get(key)!r}" for key, is_refused in refusals.items() if is_refused]
    if refused:
        raise ValueError(f"LoRA adapter {name!r}: not supported: {', '.join(refused)} (plain LoRA only)")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"LoRA adapter {name!r}: r must be a positive integer, got {rank!r}")
    return config
