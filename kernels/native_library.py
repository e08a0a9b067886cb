"""The CPU kernels written in C++ (kernels/native/*.cpp), built into one shared library and registered as
torch operators (`torch.ops.tritonllm_cpu.*`).

They are an acceleration, never a requirement: where no C++ compiler is found or the build fails,
`load()` says so once in the log and returns False, and the torch references serve instead. The library
is built once per source, compiler flags and torch version (its file name carries their digest), with
the system compiler against the headers of the installed torch; `python -m kernels.native_library`
builds it ahead of time (scripts/setup.sh), so a server does not compile while loading its model.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils import cpp_extension

logger = logging.getLogger(__name__)

# The tensor dtypes the kernels take (every tensor of a call in one of them; arithmetic in float32).
DTYPES = (torch.float32, torch.bfloat16)
# The KV cache may also be fp8 (EngineConfig.kv_cache_dtype), under activations of either.
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def supports_cache(dtype: torch.dtype, cache_dtype: torch.dtype) -> bool:
    """Whether the attention and cache-write kernels take a KV cache of `cache_dtype` beside activations of
    `dtype`: the same dtype, a bfloat16 cache under float32, or an fp8 cache under either (kv_cache_dtype)."""
    return dtype in DTYPES and (
        cache_dtype == dtype or (dtype == torch.float32 and cache_dtype == torch.bfloat16) or cache_dtype in FP8_DTYPES
    )


SOURCES = sorted((Path(__file__).parent / "native").glob("*.cpp"))
HEADERS = sorted((Path(__file__).parent / "native").glob("*.h"))
# Beside the project's other build outputs; TRITONLLM_NATIVE_BUILD_DIR moves it (a read-only install).
BUILD_DIR = Path(os.environ.get("TRITONLLM_NATIVE_BUILD_DIR", Path(__file__).resolve().parents[1] / "build" / "native"))
# Portable code only: the hot loops choose AVX-512, AVX2 or plain x86-64 when the library loads
# (target_clones in the sources), so a library built on one machine runs on another.
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-fopenmp", "-Wno-psabi", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]


class NativeBuildError(RuntimeError):
    """The C++ kernels could not be compiled here."""


def library_path() -> Path:
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    digest.update(" ".join([torch.__version__, *FLAGS]).encode())
    return BUILD_DIR / f"tritonllm_cpu-{digest.hexdigest()[:16]}.so"


def build() -> Path:
    """The library's path, compiling it first unless this exact build exists. Each source compiles in its own
    process, as many at once as there are cores (the attention kernels' instantiations take minutes alone),
    then one link."""
    target = library_path()
    if target.exists():
        return target
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        raise NativeBuildError("no C++ compiler (c++ or g++) on PATH")
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    # Built under private names and renamed: processes building at once never load a partial file.
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    objects = [partial.with_name(f"{partial.name}.{source.stem}.o") for source in SOURCES]
    includes = [f"-I{path}" for path in cpp_extension.include_paths()]
    try:
        # No more compilers at once than cores: each takes up to a GB or two.
        with concurrent.futures.ThreadPoolExecutor(min(len(SOURCES), os.cpu_count() or 1)) as pool:
            compiled = pool.map(
                lambda job: _run(compiler, [compiler, "-c", str(job[0]), *FLAGS, *includes, "-o", str(job[1])]),
                zip(SOURCES, objects, strict=True),
            )
            list(compiled)
        _run(compiler, [
            compiler, *map(str, objects), "-shared", *FLAGS,
            *(f"-L{path}" for path in cpp_extension.library_paths()),
            "-lc10", "-ltorch_cpu", "-o", str(partial),
        ])  # fmt: skip
    except NativeBuildError:
        partial.unlink(missing_ok=True)
        raise
    finally:
        for obj in objects:
            obj.unlink(missing_ok=True)
    os.replace(partial, target)
    # Builds of older sources go: a process that still has one loaded keeps it (the file lives on until
    # it is unmapped), and nothing loads them again.
    for stale in BUILD_DIR.glob("tritonllm_cpu-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def _run(compiler: str, command: list[str]) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise NativeBuildError(f"cannot run {compiler}: {error}") from error
    if result.returncode != 0:
        raise NativeBuildError(f"{compiler} failed ({result.returncode}):\n{result.stderr[-4000:]}")


@functools.cache
def load() -> bool:
    """Whether the native kernels are registered in this process (built first if needed)."""
    try:
        torch.ops.load_library(str(build()))
    except (NativeBuildError, OSError) as error:
        logger.warning("native CPU kernels unavailable, using the torch references: %s", error)
        return False
    return True


if __name__ == "__main__":
    if not load():
        sys.exit(1)
    print(library_path())
