"""The static, padded decode batch that CUDA graphs replay gives the same hidden states as the step itself
and writes the same KV cache: padded rows neither write nor disturb the real ones. Runs on the CPU path
(the staging is device-independent; tests/engine_models/test_engine_on_device.py replays real graphs)."""

from __future__ import annotations

import pytest
import torch

from engine.cuda_graphs import DecodeBatchBuffers, capture_sizes
from engine.models import load_model
from tests.engine_models.paged_batch import PagedSequences
from tests.engine_models.tiny_checkpoints import TINY_CASES, TinyCheckpoint, random_sequences


def test_capture_sizes_cover_every_batch_up_to_max_num_seqs() -> None:
    assert capture_sizes(256) == [1, 2, 4, 8, *range(16, 257, 16)]
    assert capture_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    assert capture_sizes(3) == [1, 2, 3]


@pytest.mark.parametrize("tiny_checkpoint", [TINY_CASES[0]], ids=lambda case: case.name, indirect=True)
def test_padded_decode_batch_matches_the_step(tiny_checkpoint: TinyCheckpoint) -> None:
    model = load_model(tiny_checkpoint.path, torch.float32, torch.device("cpu"))
    sequences = random_sequences([9, 14, 5], model.spec.vocab_size, seed=3)
    eager = PagedSequences(model.spec, sequences, block_size=4, seed=2)
    staged = PagedSequences(model.spec, sequences, block_size=4, seed=2)
    buffers = DecodeBatchBuffers(max_batch=8, max_blocks_per_seq=8, block_size=4, device=torch.device("cpu"))
    prefill = {0: 8, 1: 13, 2: 4}
    with torch.inference_mode():
        for paged in (eager, staged):
            step = paged.step(prefill)
            model(step.input_ids, step.positions, paged.kv_cache, step.attn)
        # Garbage left in the padded rows by an earlier, larger step must not matter.
        buffers.slot_mapping.fill_(0)
        buffers.seq_lens.fill_(7)
        buffers.block_tables.fill_(1)
        decode = {0: 1, 1: 1, 2: 1}
        expected_step = eager.step(decode)
        expected = model(expected_step.input_ids, expected_step.positions, eager.kv_cache, expected_step.attn)
        step = staged.step(decode)
        buffers.stage(step.input_ids, step.positions, step.attn, size=4)
        input_ids, positions, attn = buffers.view(4)
        hidden = model(input_ids, positions, staged.kv_cache, attn)
    # Not bitwise: a matmul over 4 rows may block its sums differently from one over 3.
    torch.testing.assert_close(hidden[:3], expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(staged.kv_cache, eager.kv_cache, atol=1e-6, rtol=1e-5)
    assert buffers.slot_mapping[3].item() == -1 and buffers.seq_lens[3].item() == 1
