"""Kernel tests run the Triton kernels on CUDA when present, otherwise under TRITON_INTERPRET on the CPU
(set by tests/conftest.py before any test module loads).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import torch

from kernels import ops

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# The C++ CPU kernels (kernels/native) need a compiler; without one the torch path serves alone.
needs_compiler = pytest.mark.skipif(
    shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler: the torch path serves alone"
)

# Per-dtype tolerances (atol, rtol) for Triton kernels against their float32-accumulating references.
# bfloat16 allows two ulps: Triton's interpreter truncates float32 -> bfloat16 where GPUs round to nearest.
TOLERANCES = {
    torch.float32: (2e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@pytest.fixture
def triton_backend() -> Iterator[None]:
    """Route `kernels.ops` to the Triton kernels for one test, then back to auto."""
    ops.set_backend("triton")
    yield
    ops.set_backend("auto")


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
