"""Our models against Hugging Face on tiny random checkpoints: varlen prefill and paged decode, fp32."""

from __future__ import annotations

import pytest
import torch

from engine.models import CausalLM, load_model, packed_gemm
from tests.engine_models.paged_batch import PagedSequences
from tests.engine_models.tiny_checkpoints import TinyCheckpoint, hf_logits, random_sequences
from tests.engine_models.weight_formats import PREPACKED_FORMATS

ATOL = 1e-4
# Plain weights, and the projections and LM head in each prepacked format the CPU engine may choose.
PACKED = pytest.mark.parametrize("packed", [packed_gemm.PLAIN, *PREPACKED_FORMATS])


def tiny_model(checkpoint: TinyCheckpoint, packed: str) -> CausalLM:
    model = load_model(checkpoint.path, torch.float32, torch.device("cpu"))
    if packed != packed_gemm.PLAIN:
        model.pack_weights(packed)
    return model


@PACKED
def test_varlen_prefill_matches_hf(tiny_checkpoint: TinyCheckpoint, packed: str) -> None:
    model = tiny_model(tiny_checkpoint, packed)
    sequences = random_sequences([7, 1, 19, 12], model.spec.vocab_size, seed=2)
    paged = PagedSequences(model.spec, sequences, block_size=4)
    step = paged.step({i: len(s) for i, s in enumerate(sequences)})
    with torch.inference_mode():
        logits = model.compute_logits(model(step.input_ids, step.positions, paged.kv_cache, step.attn))
    assert logits.dtype == torch.float32 and logits.shape == (sum(map(len, sequences)), model.spec.vocab_size)
    for seq, rows in enumerate(step.rows):
        torch.testing.assert_close(
            logits[rows], hf_logits(tiny_checkpoint, sequences[seq]), atol=ATOL, rtol=0
        )


@PACKED
def test_paged_decode_matches_hf(tiny_checkpoint: TinyCheckpoint, packed: str) -> None:
    """Prefix prefill, then one token per step through shuffled blocks, while a late sequence prefills in
    chunks in the same steps; every new row is compared with HF's logits at that position."""
    model = tiny_model(tiny_checkpoint, packed)
    sequences = random_sequences([13, 9, 11], model.spec.vocab_size, seed=3)
    expected = [hf_logits(tiny_checkpoint, s) for s in sequences]
    paged = PagedSequences(model.spec, sequences, block_size=4, seed=5)
    schedule = [{0: 6, 1: 2}] + [{0: 1, 1: 1, 2: 3}] * 3 + [{0: 1, 1: 1, 2: 1}] * 2 + [{0: 1, 1: 1}] * 2
    for chunks in schedule:
        starts = [paged.num_computed[seq] for seq in chunks]
        step = paged.step(chunks)
        with torch.inference_mode():
            logits = model.compute_logits(model(step.input_ids, step.positions, paged.kv_cache, step.attn))
        for (seq, count), start, rows in zip(chunks.items(), starts, step.rows, strict=True):
            torch.testing.assert_close(logits[rows], expected[seq][start : start + count], atol=ATOL, rtol=0)
    assert paged.num_computed == [len(s) for s in sequences]
