"""Prepacked CPU weights (MKL's packed GEMM in float32, oneDNN's reordered layout in float32 and bfloat16)
against F.linear, layers handing their weights over to them, and the per-machine choice between them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine import EngineConfig
from engine.distributed import TensorParallelGroup
from engine.model_shard import ModelShard
from engine.models import packed_gemm
from engine.models.linear import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from engine.models.sharding import RowSlice
from tests.engine_models.tiny_checkpoints import TinyCheckpoint
from tests.engine_models.weight_formats import PREPACKED_FORMATS

CPU = torch.device("cpu")
FORMAT = pytest.mark.parametrize("format_name", PREPACKED_FORMATS)


def random(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_this_build_offers_a_format() -> None:
    """torch's CPU wheels ship MKL and oneDNN: losing both would silently slow every CPU deployment."""
    assert packed_gemm.available_formats()


@FORMAT
@pytest.mark.parametrize("rows", [0, 1, 2, 7, 64, 301])
def test_one_pack_serves_every_row_count(format_name: str, rows: int) -> None:
    weight, bias = random(96, 40, seed=1), random(96, seed=2)
    packed = packed_gemm.prepack(weight, format_name)
    x = random(rows, 40, seed=3)
    torch.testing.assert_close(packed.linear(x), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed.linear(x, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    strided_bias = random(192, seed=2)[::2]
    torch.testing.assert_close(
        packed.linear(x, strided_bias), F.linear(x, weight, strided_bias), rtol=1e-5, atol=1e-5
    )


@FORMAT
def test_leading_dimensions_and_strided_input(format_name: str) -> None:
    weight = random(24, 16, seed=4)
    packed = packed_gemm.prepack(weight, format_name)
    batched = random(3, 5, 16, seed=5)
    torch.testing.assert_close(packed.linear(batched), F.linear(batched, weight), rtol=1e-5, atol=1e-5)
    strided = random(16, 9, seed=6).t()  # [9, 16], not contiguous
    torch.testing.assert_close(packed.linear(strided), F.linear(strided, weight), rtol=1e-5, atol=1e-5)


@FORMAT
def test_the_pack_owns_its_copy(format_name: str) -> None:
    weight = random(32, 8, seed=7)
    expected = F.linear(torch.ones(2, 8), weight)
    packed = packed_gemm.prepack(weight, format_name)
    weight.zero_()
    torch.testing.assert_close(packed.linear(torch.ones(2, 8)), expected, rtol=1e-5, atol=1e-5)


@FORMAT
def test_other_dtypes_are_refused(format_name: str) -> None:
    with pytest.raises(ValueError, match="float32"):
        packed_gemm.prepack(random(8, 8, seed=8).half(), format_name)
    packed = packed_gemm.prepack(random(8, 8, seed=9), format_name)
    with pytest.raises(TypeError, match="bfloat16"):
        packed.linear(torch.ones(2, 8, dtype=torch.bfloat16))


def test_mkl_packs_float32_only() -> None:
    assert "mkl" not in packed_gemm.available_formats(torch.bfloat16)
    with pytest.raises(ValueError, match="not available"):
        packed_gemm.prepack(random(8, 8, seed=8).bfloat16(), "mkl")


@pytest.mark.skipif("onednn" not in packed_gemm.available_formats(torch.bfloat16), reason="no oneDNN")
@pytest.mark.parametrize("rows", [0, 1, 7, 64, 301])
def test_onednn_bfloat16_weights_serve_every_row_count(rows: int) -> None:
    """Both sides accumulate in float32 and round once to bfloat16; a sum in another order may land on
    the neighbouring bfloat16, which torch's default bfloat16 tolerance (1.6e-2 relative) covers."""
    weight, bias = random(96, 40, seed=1).bfloat16(), random(96, seed=2).bfloat16()
    packed = packed_gemm.prepack(weight, "onednn")
    x = random(rows, 40, seed=3).bfloat16()
    out = packed.linear(x, bias)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 96)
    torch.testing.assert_close(out, F.linear(x, weight, bias))
    with pytest.raises(TypeError, match="float32"):
        packed.linear(x.float())


@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(dtype, marks=pytest.mark.skipif(
            "onednn+decode" not in packed_gemm.available_formats(dtype), reason=f"no decode kernel for {dtype} here"
        ))
        for dtype in (torch.float32, torch.bfloat16)
    ],
)  # fmt: skip
@pytest.mark.parametrize("rows", [0, 1, 7, 16, 64, 65, 129, 513])
@pytest.mark.parametrize(("out_features", "in_features"), [(96, 64), (96, 40), (90, 40), (96, 39)])
def test_decode_batches_take_the_packed_weight(dtype: torch.dtype, rows: int, out_features: int, in_features: int) -> None:
    """Up to DECODE_KERNEL_ROWS rows the C++ kernel multiplies (out_features a multiple of 16, in_features
    even in bfloat16), oneDNN beyond and for other weights; both within the dtype's rounding of the exact
    product, strided bias too. (x holds 2 x rows rows.)"""
    weight = random(out_features, in_features, seed=1).to(dtype)
    bias = random(2 * out_features, seed=2).to(dtype)[::2]
    packed = packed_gemm.prepack(weight, "onednn+decode")
    x = random(2, rows, in_features, seed=3).to(dtype)
    out = packed.linear(x, bias)
    assert out.dtype == dtype and out.shape == (2, rows, out_features)
    exact = F.linear(x.double(), weight.double(), bias.double())
    tolerance = 1e-4 if dtype == torch.float32 else 1.6e-2
    torch.testing.assert_close(out.double(), exact, rtol=tolerance, atol=tolerance)
    weight.zero_()  # the pack holds its own copies
    torch.testing.assert_close(packed.linear(x, bias), out)
    other = torch.bfloat16 if dtype == torch.float32 else torch.float32
    with pytest.raises(TypeError, match=str(dtype).removeprefix("torch.")):
        packed.linear(x.to(other))


@pytest.mark.skipif(
    "onednn+decode" not in packed_gemm.available_formats(torch.bfloat16), reason="no AVX512_BF16"
)
def test_auto_refines_onednn_only_when_the_second_copy_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packed_gemm, "_available_memory_bytes", lambda: 4 << 30)
    assert packed_gemm.refine("onednn", torch.bfloat16, 1 << 30) == "onednn+decode"
    assert packed_gemm.refine("onednn", torch.bfloat16, 2 << 30) == "onednn"
    assert packed_gemm.refine("onednn", torch.bfloat16, 1 << 30, reserved_bytes=1 << 30) == "onednn"
    assert packed_gemm.refine("mkl", torch.float32, 1 << 20) == "mkl"
    assert packed_gemm.refine(packed_gemm.PLAIN, torch.bfloat16, 1 << 20) == packed_gemm.PLAIN
    weights = [random(64, 64, seed=15).bfloat16()]
    assert "onednn+decode" not in packed_gemm.format_costs(weights), "timing from cache cannot judge it"


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="not available"):
        packed_gemm.prepack(random(8, 8, seed=8), "blis")
    with pytest.raises(ValueError, match="cpu_weight_format"):
        EngineConfig(model="unused", cpu_weight_format="blis")


@FORMAT
def test_a_packed_layer_frees_its_weight_and_computes_the_same(format_name: str) -> None:
    layer = ColumnParallelLinear(16, [RowSlice(0, 12, 12), RowSlice(0, 20, 20)], True, torch.float32, CPU)
    layer.weight.data.copy_(random(32, 16, seed=10))
    layer.bias.data.copy_(random(32, seed=11))  # type: ignore[union-attr]
    x = random(5, 16, seed=12)
    expected = layer(x)
    layer.pack(format_name)
    assert "weight" not in dict(layer.named_parameters())
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@FORMAT
@pytest.mark.parametrize("keep_table", [True, False])
def test_packed_lm_head_keeps_the_table_only_when_asked(format_name: str, keep_table: bool) -> None:
    table = VocabParallelEmbedding(50, 16, torch.float32, CPU, TensorParallelGroup.single())
    table.weight.data.copy_(random(50, 16, seed=13))
    hidden, ids = random(3, 16, seed=14), torch.tensor([4, 0, 49])
    expected_logits, expected_rows = table.logits(hidden), table(ids)
    table.pack(format_name, keep_weight=keep_table)
    logits = table.logits(hidden)
    assert logits is not None
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    assert ("weight" in dict(table.named_parameters())) == keep_table
    if keep_table:
        assert torch.equal(table(ids), expected_rows)


class SlowFormat:
    """F.linear computed ten times over: a format no honest timing may prefer."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.clone()
        self.out_features, self.in_features = weight.shape

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        for _ in range(9):
            F.linear(x, self.weight, bias)
        return F.linear(x, self.weight, bias)


def test_format_costs_time_every_candidate_against_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(packed_gemm.FORMATS, "slow", SlowFormat)
    monkeypatch.setattr(packed_gemm, "available_formats", lambda dtype: ("slow",))
    weights = [random(40, 24, seed=15), random(24, 40, seed=16)]  # shapes no other test times
    costs = packed_gemm.format_costs(weights)
    assert list(costs) == [packed_gemm.PLAIN, "slow"]
    assert costs[packed_gemm.PLAIN] == len(packed_gemm.TIMED_ROWS)
    assert costs["slow"] > 3 * costs[packed_gemm.PLAIN]


def projections(shard: ModelShard) -> list[ColumnParallelLinear | RowParallelLinear]:
    return [m for m in shard.model.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear))]


def test_a_cpu_shard_packs_every_projection_the_same_way(tiny_checkpoint: TinyCheckpoint) -> None:
    def shard(weight_format: str) -> ModelShard:
        config = EngineConfig(
            model=str(tiny_checkpoint.path), cpu_weight_format=weight_format, num_kv_blocks=4
        )
        return ModelShard(config, CPU, torch.float32, TensorParallelGroup.single())

    plain = shard(packed_gemm.PLAIN)
    assert all(
        layer.packed is None and "weight" in dict(layer.named_parameters()) for layer in projections(plain)
    )
    chosen = shard("auto")
    kinds = {type(layer.packed) for layer in projections(chosen)}
    assert len(kinds) == 1, "every layer packs into the one format chosen"
    assert kinds <= {type(None), *(packed_gemm.FORMATS[name] for name in packed_gemm.available_formats())}


def test_a_bfloat16_cpu_shard_packs_too(tiny_checkpoint: TinyCheckpoint) -> None:
    config = EngineConfig(model=str(tiny_checkpoint.path), num_kv_blocks=4)
    shard = ModelShard(config, CPU, torch.bfloat16, TensorParallelGroup.single())
    kinds = {type(layer.packed) for layer in projections(shard)}
    assert len(kinds) == 1
    assert kinds <= {type(None), *(packed_gemm.FORMATS[name] for name in packed_gemm.available_formats(torch.bfloat16))}
    forced = EngineConfig(model=str(tiny_checkpoint.path), num_kv_blocks=4, cpu_weight_format="mkl")
    with pytest.raises(ValueError, match="not available"):
        ModelShard(forced, CPU, torch.bfloat16, TensorParallelGroup.single())


@pytest.mark.skipif(
    "onednn+decode" not in packed_gemm.available_formats(torch.bfloat16), reason="no AVX512_BF16"
)
@pytest.mark.parametrize(("available_bytes", "expected"), [(1 << 40, "onednn+decode"), (0, "onednn")])
def test_auto_takes_the_decode_refinement_when_it_fits(
    tiny_checkpoint: TinyCheckpoint, monkeypatch: pytest.MonkeyPatch, available_bytes: int, expected: str
) -> None:
    """oneDNN timed cheapest: auto packs every projection into its refinement only with room for it."""
    monkeypatch.setattr(packed_gemm, "format_costs", lambda weights: {packed_gemm.PLAIN: 4.0, "onednn": 1.0})
    monkeypatch.setattr(packed_gemm, "_available_memory_bytes", lambda: available_bytes)
    config = EngineConfig(model=str(tiny_checkpoint.path), num_kv_blocks=4, kv_cache_memory=1 << 20)
    shard = ModelShard(config, CPU, torch.bfloat16, TensorParallelGroup.single())
    assert {type(layer.packed) for layer in projections(shard)} == {packed_gemm.FORMATS[expected]}
