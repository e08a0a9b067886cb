"""Float32 and bfloat16 projections on the CPU from weights prepacked once into a GEMM library's own layout.

Why: at decode batch sizes torch's `F.linear` runs well below what the CPU can do, and which library
does better depends on the CPU. The four projections of SmolLM2-135M's 30 layers in float32, 2 cores:
- Intel Xeon (AVX-512): F.linear 22 / 48-56 / 99-115 ms at 1 / 8 / 64 rows; MKL's packed GEMM
  (`cblas_sgemm_pack` / `cblas_sgemm_compute`) 22 / 31-35 / 85-90; oneDNN slower at 1 row (28 ms).
- AMD EPYC (Zen 4): F.linear 35 / 41 / 109 ms at 1 / 8 / 64 rows and 172 GFLOP/s at 2,048; MKL's packed
  GEMM 29 / 55 / 121; oneDNN's reordered weights (`torch.ops.mkldnn`) 19 / 20 / 71 and 210 GFLOP/s.
In bfloat16 (Zen 4, AVX-512 BF16) oneDNN's reordered weights take 4 / 7 / 34 ms at 1 / 8 / 64 rows against
F.linear's 10 / 14 / 45, half of float32's time (MKL's packed GEMM is float32 only). At decode batch sizes
oneDNN's bfloat16 products fall short of the machine: at 1-16 rows its blocked weights stream at ~18-20
GB/s of ~31-33, at 32-64 rows it computes at ~300-350 GFLOP/s of ~420. The "onednn+decode" format keeps a
second copy of the weight, packed for a C++ kernel (kernels/native/small_m_linear.cpp) that multiplies up
to DECODE_KERNEL_ROWS rows: all of SmolLM2-135M's 121 projections, cold, at 1 / 16 / 32 / 64 / 128 rows
8.6-8.9 / 14.7 / 24.5 / 43.5 / 82.5 ms against oneDNN's 13.5-14.2 / 17.8-18.5 / 28.0 / 47.7 / 86.7 (even at
256 rows, and oneDNN ahead at 512), at twice the weight memory. In float32 the same kernel (FMAs)
takes 12.9 / 45.0 / 89.4 / 339.6 ms at 1 / 64 / 128 / 512 rows on the Zen 5 EPYC against oneDNN's 14.4 / 47.5 /
89.2 / 316.2 on idle cores, but 349.8 against 445.6 at 512 rows beside another process's bursts: its
threads share out tiles as they go, oneDNN's split is fixed and waits for a preempted thread. A server's
cores are shared with its other processes, so float32 takes the kernel up to 512 rows (served at 64
streams: 342.9 tok/s against 325.0 with oneDNN alone).
So the format is measured, not assumed: `format_costs` times each candidate on weights of the model's
own shapes once per process, and the model packs into the cheapest ("plain" keeps F.linear).

MKL: torch builds with MKL export these CBLAS symbols from libtorch_cpu, but torch's own op over them
(`torch.ops.mkl._mkl_linear`) runs packed only for the one batch size it packed for and falls back to
`F.linear` otherwise; hence ctypes, whose foreign calls drop the GIL as torch ops do. The packed size
does not depend on the number of rows, and the rows are given at each call, so one pack serves every
batch. oneDNN: a weight reordered once without a batch-size hint serves every row count as fast as one
reordered for it. A format whose library is missing, or whose first product disagrees with `F.linear`,
is not offered.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from kernels import native_library

logger = logging.getLogger(__name__)

# F.linear on the checkpoint's own weight: the baseline every prepacked format must beat.
PLAIN = "plain"

# CBLAS enum values (mkl_cblas.h).
_ROW_MAJOR, _NO_TRANS, _TRANS, _PACKED, _B_MATRIX = 101, 111, 112, 151, 162
# The row count packing is told about: MKL sizes the pack without it, and any count may be computed.
_PACK_ROWS_HINT = 64
# Rows timed when choosing a format: decode batches of 1, 16 and 64, and a prefill chunk.
TIMED_ROWS = (1, 16, 64, 256)
_TIMING_ROUNDS = 5


# The weight dtypes each prepacked format takes; the input must have the weight's dtype.
FORMAT_DTYPES: dict[str, tuple[torch.dtype, ...]] = {
    "mkl": (torch.float32,),
    "onednn": (torch.float32, torch.bfloat16),
    "onednn+decode": (torch.float32, torch.bfloat16),
}
# Rows up to which "onednn+decode" multiplies with the C++ kernel, by dtype (oneDNN beyond: see above).
DECODE_KERNEL_ROWS = {torch.float32: 512, torch.bfloat16: 128}
# Formats that multiply as another does beyond decode batches, faster within them, for a second copy of
# the weights: `format_costs` leaves them out and `refine` takes one over its base when the copy fits.
# The choice is the memory's, and timing could not make it anyway: it multiplies one weight over and over,
# from cache, and at 1-16 rows the gain is in streaming weights from memory.
REFINEMENTS = {"onednn": "onednn+decode"}
# The most of the memory available at load the second copy may take.
_REFINEMENT_MEMORY_SHARE = 0.25
# The C++ kernel packs out_features in blocks of 16 and in_features in pairs; other weights stay with oneDNN.
_DECODE_KERNEL_BLOCK = 16
# The most in_features it takes: a tile of 64 outputs x in_features must stay in a 1 MB L2 while every
# pass of 6 rows reads it (measured up to 1,536; 64 x 2,048 float32 is half of it).
_DECODE_KERNEL_MAX_IN_FEATURES = {torch.float32: 2048, torch.bfloat16: 4096}


class PrepackedWeight(Protocol):
    """A [out_features, in_features] weight held in a GEMM library's own layout."""

    out_features: int
    in_features: int

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in_features] (the weight's dtype) -> x @ weight.T + bias, [..., out_features]."""
        ...


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
    """libtorch_cpu with the packed-GEMM symbols bound, or None where it has none."""
    if not torch.backends.mkl.is_available():
        return None
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        return _bind(ctypes.CDLL(str(path)))
    except (OSError, AttributeError):
        return None


def _check_cpu_weight(weight: torch.Tensor, format_name: str) -> None:
    dtypes = FORMAT_DTYPES[format_name]
    if weight.dtype not in dtypes or weight.device.type != "cpu" or weight.dim() != 2:
        names = " or ".join(str(dtype).removeprefix("torch.") for dtype in dtypes)
        raise ValueError(
            f"{format_name} packs 2-D {names} CPU weights, got {weight.dtype} {tuple(weight.shape)} on {weight.device}"
        )


def _rows_of(x: torch.Tensor, in_features: int, dtype: torch.dtype) -> torch.Tensor:
    """x [..., in_features] as dense [rows, in_features]. The model's activations already are (a reshape
    and a view back cost a fifth of a one-row product's time in Python)."""
    if x.dtype != dtype:
        raise TypeError(f"a packed {dtype} weight cannot multiply {x.dtype}")
    if x.shape[-1] != in_features:
        raise ValueError(f"a packed weight of {in_features} input features cannot multiply {tuple(x.shape)}")
    if x.dim() == 2 and x.is_contiguous():
        return x
    return x.reshape(-1, in_features).contiguous()


def _shaped_like(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The product's [rows, out_features] with x's leading dimensions."""
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])


def _dense_bias(bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The bias as oneDNN and the C++ kernel read it: dense (a strided view would be read wrongly, not
    refused), of the weight's dtype."""
    if bias is None:
        return None
    if bias.dtype != dtype:
        raise TypeError(f"a packed {dtype} weight cannot add a {bias.dtype} bias")
    return bias.contiguous()


class MklPackedWeight:
    """A float32 CPU weight [out_features, in_features] in MKL's packed layout, for
    `linear(x) == F.linear(x, weight)`. Holds its own copy: the source tensor may be freed afterwards."""

    def __init__(self, weight: torch.Tensor) -> None:
        library = _mkl()
        if library is None:
            raise RuntimeError("MKL's packed GEMM is not available in this torch build")
        self._library = library
        _check_cpu_weight(weight, "mkl")
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
        rows = _rows_of(x, self.in_features, torch.float32)
        out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32)
        if rows.shape[0] > 0:
            self._library.cblas_sgemm_compute(
                _ROW_MAJOR, _NO_TRANS, _PACKED, rows.shape[0], self.out_features, self.in_features,
                rows.data_ptr(), self.in_features, self._buffer.data_ptr(), self.in_features, 0.0,
                out.data_ptr(), self.out_features,
            )  # fmt: skip
        if bias is not None:
            out.add_(bias)
        return _shaped_like(out, x)


class OneDnnWeight:
    """A float32 or bfloat16 CPU weight [out_features, in_features] reordered into oneDNN's blocked layout
    (an opaque mkldnn tensor), for `linear(x) == F.linear(x, weight)`. Holds its own copy."""

    def __init__(self, weight: torch.Tensor) -> None:
        if not torch.backends.mkldnn.is_available():
            raise RuntimeError("oneDNN is not available in this torch build")
        _check_cpu_weight(weight, "onednn")
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype
        self._reordered = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in_features] (the weight's dtype) -> x @ weight.T + bias, [..., out_features]."""
        rows = _rows_of(x, self.in_features, self.dtype)
        out = torch.ops.mkldnn._linear_pointwise(
            rows, self._reordered, _dense_bias(bias, self.dtype), "none", [], ""
        )
        return _shaped_like(out, x)


class OneDnnDecodeWeight:
    """A float32 or bfloat16 CPU weight [out_features, in_features] twice: reordered for oneDNN, which
    multiplies more than DECODE_KERNEL_ROWS rows, and packed for the C++ kernel that multiplies up to that
    many (kernels/native/small_m_linear.cpp; AVX-512, and AVX512_BF16 for bfloat16). Holds its own copies."""

    def __init__(self, weight: torch.Tensor) -> None:
        if not (native_library.load() and torch.ops.tritonllm_cpu.small_m_linear_supported(weight.dtype)):
            raise RuntimeError(
                "the C++ decode-batch kernel needs the native library and a CPU with AVX-512 (and AVX512_BF16"
                " for bfloat16)"
            )
        _check_cpu_weight(weight, "onednn+decode")
        self._onednn = OneDnnWeight(weight)
        self.dtype = weight.dtype
        self.out_features, self.in_features = weight.shape
        features_per_step = 2 if weight.dtype == torch.bfloat16 else 1
        packable = (
            self.out_features % _DECODE_KERNEL_BLOCK == 0
            and self.in_features % features_per_step == 0
            and self.in_features <= _DECODE_KERNEL_MAX_IN_FEATURES[self.dtype]
        )
        self._packed = torch.ops.tritonllm_cpu.small_m_linear_pack(weight) if packable else None

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [..., in_features] (the weight's dtype) -> x @ weight.T + bias, [..., out_features]."""
        rows = _rows_of(x, self.in_features, self.dtype)
        if self._packed is None or rows.shape[0] > DECODE_KERNEL_ROWS[self.dtype]:
            return self._onednn.linear(x, bias)
        out = torch.ops.tritonllm_cpu.small_m_linear(rows, self._packed, _dense_bias(bias, self.dtype))
        return _shaped_like(out, x)


# Every prepacked format by the name `EngineConfig.cpu_weight_format` gives it.
FORMATS: dict[str, Callable[[torch.Tensor], PrepackedWeight]] = {
    "mkl": MklPackedWeight,
    "onednn": OneDnnWeight,
    "onednn+decode": OneDnnDecodeWeight,
}


@functools.cache
def available_formats(dtype: torch.dtype = torch.float32) -> tuple[str, ...]:
    """The prepacked formats this process can use for `dtype` weights: library present, and a small product
    agrees with F.linear (guards against an ABI that differs from the one bound, or a CPU the library
    mishandles, before any model weight goes through)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 64, generator=generator).to(dtype)  # 48: the bfloat16 decode kernel takes it
    x = torch.randn(5, 64, generator=generator).to(dtype)
    # bfloat16 products differ from F.linear's by their rounding (both accumulate in float32).
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    usable = []
    for name, make in FORMATS.items():
        if dtype not in FORMAT_DTYPES[name]:
            continue
        try:
            product = make(weight).linear(x)
        except (RuntimeError, OSError, AttributeError) as error:
            logger.info("%s weight format %s unavailable: %s", dtype, name, error)
            continue
        if torch.allclose(product.float(), F.linear(x, weight).float(), rtol=tolerance, atol=tolerance):
            usable.append(name)
        else:
            logger.warning("%s weight format %s disagrees with F.linear on this machine; not used", dtype, name)
    return tuple(usable)


def prepack(weight: torch.Tensor, format_name: str) -> PrepackedWeight:
    """A copy of the CPU `weight` in the format `format_name`, available for its dtype."""
    if format_name not in available_formats(weight.dtype):
        takes = ", ".join(str(dtype) for dtype in FORMAT_DTYPES.get(format_name, ()))
        raise ValueError(
            f"weight format {format_name!r} is not available for {weight.dtype} weights here (it takes: "
            f"{takes or 'nothing, unknown'}; available: {available_formats(weight.dtype)})"
        )
    return FORMATS[format_name](weight)


def refine(format_name: str, dtype: torch.dtype, weight_bytes: int, reserved_bytes: int = 0) -> str:
    """`format_name`, or its refinement (REFINEMENTS) where that is available for `dtype` and a second copy
    of `weight_bytes` takes at most a quarter of the memory available now less `reserved_bytes` (memory
    still to be allocated, such as the KV pool)."""
    refined = REFINEMENTS.get(format_name)
    if refined is None or refined not in available_formats(dtype):
        return format_name
    if weight_bytes > _REFINEMENT_MEMORY_SHARE * (_available_memory_bytes() - reserved_bytes):
        logger.info(
            "%s weights stay %s: a second copy (%d MB) would not fit", dtype, format_name, weight_bytes >> 20
        )
        return format_name
    return refined


def _available_memory_bytes() -> int:
    """MemAvailable (Linux); 0 where it cannot be read, which keeps every weight single."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def format_costs(weights: Sequence[torch.Tensor]) -> dict[str, float]:
    """What multiplying by `weights` costs on this CPU in each candidate format (PLAIN and every available
    one), relative to F.linear: at each timed row count a format scores its time over PLAIN's, summed over
    row counts (PLAIN scores len(TIMED_ROWS)), in the weights' dtype, so prefill's larger products do not drown decode's. One
    weight at a time is prepacked in every format and timed, candidates interleaved, best of
    _TIMING_ROUNDS after a warm-up. The products run on one thread and are timed in that thread's CPU
    time: the `llm` model chooses while Triton loads the other models on the same cores, and wall-clock
    timings of two-thread products taken then once ranked MKL's pack first on a CPU where it runs 1.6x
    slower. Cached per process by the weights' dtype and shapes (the speed does not depend on the values)."""
    key = (weights[0].dtype, *(tuple(weight.shape) for weight in weights))
    if key not in _costs:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _costs[key] = _time_formats(weights)
        finally:
            torch.set_num_threads(threads)
    return dict(_costs[key])


_costs: dict[tuple[object, ...], dict[str, float]] = {}


def _time_formats(weights: Sequence[torch.Tensor]) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    refinements = set(REFINEMENTS.values())
    names = (PLAIN, *(name for name in available_formats(weights[0].dtype) if name not in refinements))
    seconds = {name: [0.0] * len(TIMED_ROWS) for name in names}
    for weight in weights:
        products: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
            name: FORMATS[name](weight).linear for name in names[1:]
        }
        products[PLAIN] = functools.partial(F.linear, weight=weight)
        for column, rows in enumerate(TIMED_ROWS):
            x = torch.randn(rows, weight.shape[1], generator=generator).to(weight.dtype)
            best = dict.fromkeys(names, float("inf"))
            for round_index in range(_TIMING_ROUNDS + 1):
                for name in names:
                    begin = time.thread_time()
                    products[name](x)
                    if round_index > 0:  # round 0 warms up
                        best[name] = min(best[name], time.thread_time() - begin)
            for name in names:
                seconds[name][column] += best[name]
    return {
        name: sum(own / plain for own, plain in zip(seconds[name], seconds[PLAIN], strict=True))
        for name in names
    }
