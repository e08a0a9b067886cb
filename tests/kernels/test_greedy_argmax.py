"""The C++ greedy argmax (kernels/native/greedy_argmax.cpp) against torch.argmax, through `kernels.ops` as
the sampler calls it: vocabularies that fill whole 16-float vectors, leave a tail, or are shorter than
one; ties inside a lane and across lanes; NaN and infinities; strided rows."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from kernels import native_library, ops
from tests.kernels.conftest import needs_compiler

pytestmark = needs_compiler


@pytest.fixture
def native_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Row counts of the native calls, so each test shows the C++ path ran (not torch's argmax again)."""
    assert native_library.load()
    calls: list[int] = []
    kernel = torch.ops.tritonllm_cpu.greedy_argmax
    monkeypatch.setattr(
        torch.ops.tritonllm_cpu, "greedy_argmax", lambda logits: calls.append(logits.shape[0]) or kernel(logits)
    )
    yield calls


def assert_matches_torch(logits: torch.Tensor) -> None:
    got = ops.greedy_argmax(logits)
    assert got.dtype == torch.int64
    assert torch.equal(got, logits.argmax(dim=-1)), f"{got.tolist()} != {logits.argmax(dim=-1).tolist()}"


@pytest.mark.parametrize("vocab", [49152, 151936, 48, 33, 16, 7, 1])
def test_random_logits(vocab: int, native_calls: list[int]) -> None:
    assert_matches_torch(torch.randn(37, vocab, generator=torch.Generator().manual_seed(vocab)))
    assert native_calls == [37]


def test_ties_keep_the_first_index(native_calls: list[int]) -> None:
    logits = torch.zeros(5, 100)
    logits[0, [3, 19, 35]] = 2.0  # one lane, three vectors
    logits[1, [21, 4, 90]] = 2.0  # different lanes: the smallest index wins, not the lowest lane
    logits[2, [97, 98]] = 2.0  # both in the tail past the last whole vector
    logits[3, [10, 99]] = 2.0  # one in the vectors, one in the tail
    # row 4: all equal, so index 0
    assert_matches_torch(logits)
    assert ops.greedy_argmax(logits).tolist() == [3, 4, 97, 10, 0]


def test_nan_and_infinities(native_calls: list[int]) -> None:
    logits = torch.randn(6, 100)
    logits[0, [37, 80]] = float("nan")  # the first NaN, inside the vectors
    logits[1, 98] = float("nan")  # in the tail
    logits[1, 5] = float("inf")
    logits[2, [3, 60]] = float("inf")
    logits[3] = float("-inf")
    logits[4, :] = float("-inf")
    logits[4, 71] = -1e30
    logits[5, 0] = float("nan")
    assert_matches_torch(logits)
    assert ops.greedy_argmax(logits).tolist() == [37, 98, 3, 0, 71, 0]


def test_strided_rows_and_an_empty_batch(native_calls: list[int]) -> None:
    wide = torch.randn(8, 300)
    assert_matches_torch(wide[:, :250])
    assert_matches_torch(wide[::2])
    assert_matches_torch(torch.randn(0, 64))
    assert native_calls == [8, 4, 0]


def test_other_dtypes_and_columns_take_torch(native_calls: list[int]) -> None:
    logits = torch.randn(4, 64)
    assert_matches_torch(logits.to(torch.bfloat16))
    assert_matches_torch(logits.t())
    ops.set_backend("torch")
    try:
        assert_matches_torch(logits)
    finally:
        ops.set_backend("auto")
    assert native_calls == []
