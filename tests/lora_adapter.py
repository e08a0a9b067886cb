"""Real LoRA adapters for the tests, written by PEFT itself (the format every fine-tuning run saves).

PEFT initialises B to zeros (an adapter that changes nothing); these adapters draw both A and B at random,
scaled so that greedy outputs visibly differ from the base model's without turning into noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def write_random_adapter(
    checkpoint: Path,
    output: Path,
    *,
    seed: int,
    rank: int = 8,
    alpha: int = 16,
    target_modules: Sequence[str] = ALL_PROJECTIONS,
    use_rslora: bool = False,
    weight_std: float = 0.05,
) -> Path:
    """A LoRA adapter of `checkpoint` saved by PEFT's save_pretrained into `output` (adapter_config.json +
    adapter_model.safetensors), its A and B matrices drawn from N(0, weight_std) with `seed`."""
    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        use_rslora=use_rslora,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * weight_std)
    model.save_pretrained(output)
    return output
