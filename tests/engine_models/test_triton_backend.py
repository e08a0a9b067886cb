"""The same model code with every op routed to the Triton kernels (interpreted when there is no GPU)."""

from __future__ import annotations

import pytest
import torch

from engine.models import load_model
from tests.engine_models.paged_batch import PagedSequences
from tests.engine_models.tiny_checkpoints import TINY_CASES, TinyCheckpoint, hf_logits, random_sequences

# Triton's fp32 dots may use TF32 on a GPU; the interpreter computes them exactly.
ATOL = 2e-3 if torch.cuda.is_available() else 1e-4
# Flavours covering qk-norm, every bias, llama3/yarn rope, tied heads and sliding windows.
CASES = [
    c
    for c in TINY_CASES
    if c.name in ("qwen3-yarn", "qwen3-bias-tied", "llama-bias-llama3rope-sharded", "mistral-sliding")
]


@pytest.mark.parametrize("tiny_checkpoint", CASES, ids=lambda case: case.name, indirect=True)
def test_prefill_and_decode_on_triton_kernels(
    tiny_checkpoint: TinyCheckpoint, triton_backend: torch.device
) -> None:
    model = load_model(tiny_checkpoint.path, torch.float32, triton_backend)
    sequences = random_sequences([10, 7], model.spec.vocab_size, seed=4)
    expected = [hf_logits(tiny_checkpoint, s) for s in sequences]
    paged = PagedSequences(model.spec, sequences, block_size=4, seed=6, device=triton_backend)
    for chunks in [{0: 8, 1: 5}, {0: 1, 1: 1}, {0: 1, 1: 1}]:
        starts = [paged.num_computed[seq] for seq in chunks]
        step = paged.step(chunks)
        with torch.inference_mode():
            logits = model.compute_logits(
                model(step.input_ids, step.positions, paged.kv_cache, step.attn)
            ).cpu()
        for (seq, count), start, rows in zip(chunks.items(), starts, step.rows, strict=True):
            torch.testing.assert_close(logits[rows], expected[seq][start : start + count], atol=ATOL, rtol=0)
