"""The dispatcher itself: backend names, and the lazy Triton import the interpreter setup relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kernels import ops

ROOT = Path(__file__).resolve().parents[2]


def test_set_backend_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="cuda"):
        ops.set_backend("cuda")


def test_importing_ops_leaves_triton_unimported() -> None:
    """@triton.jit fixes compiled-vs-interpreted at import, so the engine importing `kernels.ops` must
    not import any Triton module (and the CPU path never pays for it)."""
    code = "import sys, kernels.ops; print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
