"""Writes a random-initialised Hugging Face checkpoint with the shape of a real model, for benchmarks on
machines no weights can reach (a GPU box without a model hub). Not a test.

    python -m benchmarks.random_checkpoint --shape qwen3-1.7b --tokenizer models/SmolLM2-135M-Instruct \
        --output /tmp/qwen3-1.7b-random [--device cuda] [--dtype bfloat16]

The layer shapes are the named model's; the vocabulary is the given tokenizer's (so the engine can
detokenize and build grammars), which shrinks the embedding and LM head of models with larger vocabularies.
Throughput depends on the shapes, not the values, so these figures stand for the real model's.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

# Layer shapes from each model's published config.json.
SHAPES: dict[str, tuple[Callable[..., PretrainedConfig], dict[str, Any]]] = {
    "qwen2.5-0.5b": (Qwen2Config, dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, rope_theta=1_000_000.0, tie_word_embeddings=True,
    )),
    "qwen2.5-1.5b": (Qwen2Config, dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, rope_theta=1_000_000.0, tie_word_embeddings=True,
    )),
    "qwen3-0.6b": (Qwen3Config, dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, rope_theta=1_000_000.0, tie_word_embeddings=True,
    )),
    "qwen3-1.7b": (Qwen3Config, dict(
        hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, rope_theta=1_000_000.0, tie_word_embeddings=True,
    )),
    "llama-3.2-1b": (LlamaConfig, dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, rope_theta=500_000.0, tie_word_embeddings=True,
    )),
}


def write_random_checkpoint(shape: str, tokenizer_dir: Path, output: Path, device: str, dtype: torch.dtype) -> int:
    """Saves config, weights and tokenizer into `output`; returns the parameter count."""
    config_class, layers = SHAPES[shape]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = config_class(
        **layers,
        vocab_size=len(tokenizer),
        max_position_embeddings=32768,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):  # HF's init (normal, std 0.02) runs on the device: seconds, not minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(output)
    tokenizer.save_pretrained(output)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3-1.7b")
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    args = parser.parse_args()
    start = time.perf_counter()
    count = write_random_checkpoint(args.shape, args.tokenizer, args.output, args.device, getattr(torch, args.dtype))
    print(f"{args.shape}: {count / 1e9:.2f}B parameters ({args.dtype}) in {args.output}, "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
