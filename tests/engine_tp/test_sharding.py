"""Which slice of each weight a rank owns, checked without processes: head split and replication, the
errors for splits that cannot work, a rank's shard against the whole model, and the packed step."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from engine.attention_metadata import AttentionMetadata
from engine.distributed import TensorParallelGroup
from engine.models import load_model, read_spec
from engine.models.sharding import check_tensor_parallel, head_shard
from engine.models.spec import ModelSpec
from engine.tp_workers import pack_step, packed_step_size, unpack_step


@pytest.fixture(scope="module")
def spec(tiny_qwen3: Path) -> ModelSpec:
    return read_spec(tiny_qwen3, torch.float32)


def test_kv_heads_split_while_tp_divides_them(spec: ModelSpec) -> None:
    spec = dataclasses.replace(spec, num_heads=8, num_kv_heads=4)
    shards = [head_shard(spec, rank, 2) for rank in range(2)]
    assert [(s.head_start, s.num_heads, s.kv_head_start, s.num_kv_heads) for s in shards] == [
        (0, 4, 0, 2),
        (4, 4, 2, 2),
    ]


def test_kv_heads_replicated_beyond_their_count(spec: ModelSpec) -> None:
    # 8 query heads over 2 KV heads: ranks 0-1 read KV head 0, ranks 2-3 KV head 1.
    spec = dataclasses.replace(spec, num_heads=8, num_kv_heads=2)
    shards = [head_shard(spec, rank, 4) for rank in range(4)]
    assert [(s.head_start, s.num_heads, s.kv_head_start, s.num_kv_heads) for s in shards] == [
        (0, 2, 0, 1),
        (2, 2, 0, 1),
        (4, 2, 1, 1),
        (6, 2, 1, 1),
    ]


@pytest.mark.parametrize(
    ("heads", "kv_heads", "intermediate", "tp", "message"),
    [
        (12, 3, 96, 5, r"must divide the number of attention heads \(12\)"),
        (12, 3, 96, 2, r"must divide the number of KV heads \(3\), or be a multiple"),
        (12, 3, 96, 4, r"exceeds the number of KV heads \(3\) and is not a multiple"),
        (12, 3, 100, 6, r"must divide the MLP intermediate size \(100\)"),
    ],
)
def test_impossible_splits_name_the_dimension(
    spec: ModelSpec, heads: int, kv_heads: int, intermediate: int, tp: int, message: str
) -> None:
    spec = dataclasses.replace(spec, num_heads=heads, num_kv_heads=kv_heads, intermediate_size=intermediate)
    with pytest.raises(ValueError, match=message):
        check_tensor_parallel(spec, tp)


def test_rank_loads_its_slices(tiny_llama_one_kv_head: Path) -> None:
    """Rank 1 of 2 (loading needs no collective, so no group is joined): 4 heads of 16 dims, 1 KV head,
    intermediate 96, vocabulary 255 padded to 2 x 128."""
    whole = dict(load_model(tiny_llama_one_kv_head, torch.float32, "cpu").named_parameters())
    shard_model = load_model(tiny_llama_one_kv_head, torch.float32, "cpu", TensorParallelGroup(1, 2))
    shard = dict(shard_model.named_parameters())
    assert shard_model.num_kv_heads == 1
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert torch.equal(shard[name][:127], whole[name][128:])
        assert torch.count_nonzero(shard[name][127]) == 0  # padding row
    layer = "model.layers.1"
    for suffix in ("weight", "bias"):
        qkv, whole_qkv = (
            shard[f"{layer}.self_attn.qkv_proj.{suffix}"],
            whole[f"{layer}.self_attn.qkv_proj.{suffix}"],
        )
        assert torch.equal(qkv[:32], whole_qkv[32:64])  # query heads 2 and 3
        assert torch.equal(qkv[32:64], whole_qkv[64:96])  # the only K and V heads, whole
        gate_up, whole_gate_up = (
            shard[f"{layer}.mlp.gate_up_proj.{suffix}"],
            whole[f"{layer}.mlp.gate_up_proj.{suffix}"],
        )
        assert torch.equal(gate_up[:48], whole_gate_up[48:96])
        assert torch.equal(gate_up[48:], whole_gate_up[144:])
    assert torch.equal(
        shard[f"{layer}.self_attn.o_proj.weight"], whole[f"{layer}.self_attn.o_proj.weight"][:, 32:]
    )
    assert torch.equal(shard[f"{layer}.mlp.down_proj.weight"], whole[f"{layer}.mlp.down_proj.weight"][:, 48:])
    for name in (f"{layer}.self_attn.o_proj.bias", f"{layer}.mlp.down_proj.bias", "model.norm.weight"):
        assert torch.equal(shard[name], whole[name])


def test_packed_step_round_trips() -> None:
    attn = AttentionMetadata(
        query_start_loc=torch.tensor([0, 3, 4], dtype=torch.int32),
        seq_lens=torch.tensor([3, 9], dtype=torch.int32),
        block_tables=torch.tensor([[4, 0], [7, 2]], dtype=torch.int32),
        slot_mapping=torch.tensor([64, 65, 66, 40], dtype=torch.int64),
        max_query_len=3,
        max_seq_len=9,
    )
    ids, positions = torch.tensor([11, 12, 13, 14]), torch.tensor([0, 1, 2, 8])
    lora_slots = torch.tensor([0, 0, 0, 2])
    for slots in (None, lora_slots):
        packed = pack_step(ids, positions, attn, slots)
        assert packed.numel() == packed_step_size(4, 2, 2, slots is not None)
        got_ids, got_positions, got, got_slots = unpack_step(packed, 2, 2, 3, 9, slots is not None)
        assert torch.equal(got_ids, ids) and torch.equal(got_positions, positions)
        assert got_slots is None if slots is None else torch.equal(got_slots, slots)
        for field in dataclasses.fields(AttentionMetadata):
            value, expected = getattr(got, field.name), getattr(attn, field.name)
            if isinstance(expected, torch.Tensor):
                assert value.dtype == expected.dtype and torch.equal(value, expected), field.name
            else:
                assert value == expected, field.name
