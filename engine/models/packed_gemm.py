"""Float32 projections on the CPU through MKL's packed GEMM (`cblas_sgemm_pack` / `cblas_sgemm_compute`).

Why: at decode batch sizes torch's `F.linear` runs float32 well below what the CPU can do. The four
projections of SmolLM2-135M's 30 layers took 56 / 105-115 ms at 8 / 64 rows against 33-35 / 85-90 ms
with each weight packed once into MKL's internal layout, and the LM head 20.9 / 27.6 ms against
8.7 / 21.4 (2 cores, same at 1 row and past ~100 rows). The packed size does not depend on the number
of rows, and the rows are given at each call, so one pack serves every batch.

torch builds with MKL export these CBLAS symbols from libtorch_cpu, but torch's own op over them
(`torch.ops.mkl._mkl_linear`) runs packed only for the one batch size it packed for and falls back to
`F.linear` otherwise; hence ctypes, whose foreign calls drop the GIL as torch ops do. Where the library
or its symbols are missing (torch without MKL, other platforms), or a packed product disagrees with
`F.linear` on a first check, `available()` is False and layers keep `F.linear`.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

# CBLAS enum values (mkl_cblas.h).
_ROW_MAJOR, _NO_TRANS, _TRANS, _PACKED, _B_MATRIX = 101, 111, 112, 151, 162
# The row count packing is told about: MKL sizes the pack without it, and any count may be computed.
_PACK_ROWS_HINT = 64


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    c_int, c_float, c_ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    library.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
    library.cblas_sgemm_pack_get_size.argtypes = [c_int] * 4
    library.cblas_sgemm_pack.restype = None
    library.cblas_sgemm_pack.argtypes = [c_int] * 6 + [c_float, c_ptr, c_int, c_ptr]
    library.cblas_sgemm_compute.restype = None
    library.cblas_sgemm_compute.argtypes = [c_int] * 6 + [c_ptr, c_int, c_ptr, c_int, c_float, c_ptr, c_int]
    return library


@functools.cache
def _mkl() -> ctypes.CDLL | None:
    """libtorch_cpu with the packed-GEMM symbols bound, or None where it has none or they misbehave."""
    if not torch.backends.mkl.is_available():
        return None
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        library = _bind(ctypes.CDLL(str(path)))
    except (OSError, AttributeError):
        return None
    if not _agrees_with_linear(library):
        logger.warning("MKL packed GEMM disagrees with F.linear on this machine; float32 linears stay unpacked")
        return None
    return library


def _agrees_with_linear(library: ctypes.CDLL) -> bool:
    """A small packed product against F.linear: guards against an ABI that differs from the one bound
    (64-bit integers, another enum) before any model weight goes through it."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 24, generator=generator)
    x = torch.randn(5, 24, generator=generator)
    packed = PackedWeight(weight, library)
    return torch.allclose(packed.linear(x), F.linear(x, weight), rtol=1e-5, atol=1e-5)


def available() -> bool:
    """Whether float32 weights can be packed in this process."""
    return _mkl() is not None


class PackedWeight:
    """A float32 CPU weight [out_features, in_features] packed for `linear(x) == F.linear(x, weight)`.
    Holds its own copy: the source tensor may be freed afterwards."""

    def __init__(self, weight: torch.Tensor, library: ctypes.CDLL | None = None) -> None:
        library = library or _mkl()
        if library is None:
            raise RuntimeError("MKL packed GEMM is not available in this torch build")
        self._library = library
        if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
            raise ValueError(f"packs 2-D float32 CPU weights, got {weight.dtype} {tuple(weight.shape)} on {weight.device}")
        self.out_features, self.in_features = weight.shape
        source = weight.contiguous()
        size = self._library.cblas_sgemm_pack_get_size(
            _B_MATRIX, _PACK_ROWS_HINT, self.out_features, self.in_features
        )
        # MKL reports a generous upper bound; only the pages it writes become resident.
        self._buffer = torch.empty(size, dtype=torch.uint8)
        self._library.cblas_sgemm_pack(
            _ROW_MAJOR, _B_MATRIX, _TRANS, _PACK_ROWS_HINT, self.out_features, self.in_features, 1.0,
            source.data_ptr(), self.in_features, self._buffer.data_ptr(),
        )  # fmt: skip

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in_features] float32 -> x @ weight.T + bias, [..., out_features]."""
        if x.dtype != torch.float32:
            raise TypeError(f"a packed float32 weight cannot multiply {x.dtype}")
        rows = x.reshape(-1, self.in_features).contiguous()
        out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32)
        if rows.shape[0] > 0:
            self._library.cblas_sgemm_compute(
                _ROW_MAJOR, _NO_TRANS, _PACKED, rows.shape[0], self.out_features, self.in_features,
                rows.data_ptr(), self.in_features, self._buffer.data_ptr(), self.in_features, 0.0,
                out.data_ptr(), self.out_features,
            )  # fmt: skip
        if bias is not None:
            out.add_(bias)
        return out.view(*x.shape[:-1], self.out_features)
