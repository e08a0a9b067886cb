"""Tile-size sweep for the Triton paged-attention kernel: `python -m kernels.tune_attention [--quick]`.

CUDA only, bf16. For two prefill and two decode shapes it times `AttentionTiles` configs (and, for the
small decode batch, KV split counts) with short `do_bench` runs and prints per case the current default,
the five fastest configs and dense SDPA as the bar. Configs that fail to compile, launch or fit shared
memory are listed as skipped. Tiles change the result by rounding only, so every config must match the
default config's output; one that does not is listed as WRONG and never ranked. The default's and the
best config's outputs are also checked against `paged_attention_ref`. The last line printed is JSON with
the best config per case; `--json-out` writes the same, rewritten after every case so a run cut short
keeps what it finished. It changes nothing: adopting a result means editing `choose_tiles`.

Compiling dominates a sweep (one to a few seconds per config), so each case's configs are first launched
once by a pool of processes that fill Triton's on-disk cache, then timed one by one in this process
with the GPU otherwise idle.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.bench import AttentionShape, PagedInputs, dense_sdpa, make_inputs
from kernels.paged_attention_ref import paged_attention_ref
from kernels.paged_attention_triton import (
    AttentionTiles,
    choose_num_splits,
    choose_tiles,
    paged_attention_triton,
)

DTYPE = torch.bfloat16
# bfloat16 tolerance (atol, rtol) of the kernel tests: two ulps against the float32-accumulating reference.
TOLERANCE = (1.6e-2, 1.6e-2)
# Short do_bench runs (ms): about 200 configs must fit a few minutes of a rented GPU, and the median of
# the 20-odd runs this gives is enough to rank tiles.
WARMUP_MS, REP_MS = 5, 20
SPLITS = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Config:
    tiles: AttentionTiles
    num_kv_splits: int | None  # None: the kernel's own choice (`choose_num_splits`)

    def label(self) -> str:
        t = self.tiles
        splits = "auto" if self.num_kv_splits is None else str(self.num_kv_splits)
        return f"bm{t.block_m:<3} bn{t.block_n:<3} w{t.num_warps} s{t.num_stages} splits {splits:<4}"


@dataclass(frozen=True)
class Case:
    shape: AttentionShape
    tiles: list[AttentionTiles]  # swept at the kernel's own KV split count
    splits: tuple[int, ...] = ()  # then tried with the `finalists` fastest tiles
    finalists: int = 0


@dataclass(frozen=True)
class Timing:
    config: Config
    ms: float  # median of the do_bench runs
    max_err: float  # max |out - the default config's out|


@dataclass(frozen=True)
class Skipped:
    config: Config
    reason: str  # one line
    wrong: bool  # it ran but its output differs from the default's: a kernel bug, not a resource limit


class WrongResult(Exception):
    pass


@dataclass
class CaseResult:
    case: Case
    kv_bytes: int  # K/V bytes the step reads at least once, for GB/s
    default: Timing
    sdpa_ms: float  # dense causal SDPA on contiguous K/V, the bar
    timings: list[Timing]  # fastest first
    skipped: list[Skipped]
    ref_err: dict[str, float | str]  # "default"/"best": max |out - paged_attention_ref|, or why unknown
    elapsed_s: float

    def summary(self) -> dict[str, object]:
        """What the JSON line says about this case."""
        best = self.timings[0] if self.timings else None
        return {
            "best": None
            if best is None
            else {**vars(best.config.tiles), "num_kv_splits": best.config.num_kv_splits},
            "ms": None if best is None else round(best.ms, 4),
            "gb_per_s": None if best is None else round(self.kv_bytes / best.ms / 1e6, 1),
            "default_ms": round(self.default.ms, 4),
            "sdpa_ms": round(self.sdpa_ms, 4),
            "max_err_vs_ref": self.ref_err,
        }


def tile_grid(
    block_m: Sequence[int], block_n: Sequence[int], num_warps: Sequence[int], num_stages: Sequence[int]
) -> list[AttentionTiles]:
    return [AttentionTiles(*values) for values in itertools.product(block_m, block_n, num_warps, num_stages)]


def build_cases(quick: bool) -> list[Case]:
    """Prefill at the shape kernels.bench reports (2.3x behind dense SDPA on H200) and a narrower one;
    decode at many moderate and few long contexts. --quick keeps about 12 configs per case."""
    if quick:
        prefill = tile_grid((64, 128), (32, 64, 128), (4, 8), (3,))
        decode = tile_grid((16,), (32, 64, 128), (4, 8), (2, 3))
        finalists = 1
    else:
        prefill = tile_grid((32, 64, 128), (32, 64, 128), (4, 8), (1, 2, 3, 4))
        decode = tile_grid((16,), (32, 64, 128), (2, 4, 8), (1, 2, 3))
        finalists = 3
    return [
        Case(AttentionShape("prefill 4 x 2k (Hq32 Hkv8 D128)", [2048] * 4, [2048] * 4, 32, 8, 128), prefill),
        Case(AttentionShape("prefill 8 x 1k (Hq16 Hkv8 D128)", [1024] * 8, [1024] * 8, 16, 8, 128), prefill),
        Case(AttentionShape("decode 64 x 4k (Hq32 Hkv8 D128)", [1] * 64, [4096] * 64, 32, 8, 128), decode),
        Case(
            AttentionShape("decode 4 x 16k (Hq32 Hkv8 D128)", [1] * 4, [16384] * 4, 32, 8, 128),
            decode,
            SPLITS,
            finalists,
        ),
    ]


def attend(inputs: PagedInputs, scale: float, config: Config) -> torch.Tensor:
    return paged_attention_triton(
        *inputs.args(), scale, num_kv_splits=config.num_kv_splits, tiles=config.tiles
    )


def bench_ms(fn: Callable[[], object]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median"))


def failure(exc: Exception) -> str:
    """One line: Triton's compile errors run to pages of MLIR."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def _precompile(shape: AttentionShape, configs: list[Config]) -> None:
    """Pool task: launches each config once so its binary is in Triton's on-disk cache when the timing
    pass asks for it. Failures are dropped here on purpose: the timing pass meets them again and reports
    them with their config."""
    inputs = make_inputs(shape, DTYPE, torch.device("cuda"))
    for config in configs:
        try:
            attend(inputs, shape.head_dim**-0.5, config)
        except Exception:
            continue
    torch.cuda.synchronize()


def precompile(pool: Executor | None, workers: int, shape: AttentionShape, configs: list[Config]) -> None:
    if pool is None:
        return
    start = time.perf_counter()
    tasks = min(workers, len(configs))
    futures = [pool.submit(_precompile, shape, configs[i::tasks]) for i in range(tasks)]
    wait(futures)
    died = [exc for exc in (f.exception() for f in futures) if exc is not None]
    note = f"; {len(died)} tasks died ({died[0]!r}), the timing pass compiles theirs" if died else ""
    print(
        f"  compiled {len(configs)} configs in {time.perf_counter() - start:.1f} s ({tasks} processes{note})",
        flush=True,
    )


def measure(inputs: PagedInputs, scale: float, oracle: torch.Tensor, config: Config) -> Timing:
    """Raises on a compile or launch failure, and on an output that differs from the oracle's."""
    out = attend(inputs, scale, config)
    torch.cuda.synchronize()
    max_err = (out.float() - oracle.float()).abs().max().item()  # NaN when the kernel wrote NaN
    if not torch.allclose(out.float(), oracle.float(), atol=TOLERANCE[0], rtol=TOLERANCE[1]):
        raise WrongResult(f"max |err| {max_err:.3g} vs the default config, atol/rtol {TOLERANCE}")
    return Timing(config, bench_ms(lambda: attend(inputs, scale, config)), max_err)


def sweep(
    pool: Executor | None,
    workers: int,
    inputs: PagedInputs,
    shape: AttentionShape,
    oracle: torch.Tensor,
    configs: list[Config],
) -> tuple[list[Timing], list[Skipped]]:
    precompile(pool, workers, shape, configs)
    timings, skipped = [], []
    for config in configs:
        try:
            timings.append(measure(inputs, shape.head_dim**-0.5, oracle, config))
        except Exception as exc:
            skipped.append(Skipped(config, failure(exc), isinstance(exc, WrongResult)))
    return timings, skipped


def reference_error(inputs: PagedInputs, scale: float, configs: dict[str, Config]) -> dict[str, float | str]:
    """Max |out - paged_attention_ref| per named config; a reference that fails to run is reported, not
    fatal, since the sweep's own check does not need it."""
    try:
        ref = paged_attention_ref(*inputs.args(), scale=scale).float()
    except Exception as exc:
        return dict.fromkeys(configs, f"paged_attention_ref failed: {failure(exc)}")
    return {
        name: (attend(inputs, scale, config).float() - ref).abs().max().item()
        for name, config in configs.items()
    }


def run_case(case: Case, pool: Executor | None, workers: int) -> CaseResult:
    start = time.perf_counter()
    shape = case.shape
    inputs = make_inputs(shape, DTYPE, torch.device("cuda"))
    scale = shape.head_dim**-0.5
    num_tokens, num_seqs = sum(shape.q_lens), len(shape.q_lens)
    group_size = shape.num_q_heads // shape.num_kv_heads
    default_config = Config(choose_tiles(num_tokens, num_seqs, group_size, shape.head_dim), None)
    oracle = attend(inputs, scale, default_config)

    timings, skipped = sweep(pool, workers, inputs, shape, oracle, [Config(t, None) for t in case.tiles])
    if case.splits:
        auto = choose_num_splits(
            num_tokens,
            num_seqs,
            shape.num_kv_heads,
            default_config.tiles.block_m // group_size,
            inputs.query.device,
        )
        finalists = [t.config.tiles for t in sorted(timings, key=lambda t: t.ms)[: case.finalists]]
        print(
            f"  auto KV splits here: {auto}; trying {case.splits} with the {len(finalists)} fastest tiles",
            flush=True,
        )
        more, more_skipped = sweep(
            pool, workers, inputs, shape, oracle, [Config(t, s) for t in finalists for s in case.splits]
        )
        timings += more
        skipped += more_skipped
    timings.sort(key=lambda t: t.ms)
    # Timed apart from the grid, which may lack it; its binary is cached by now.
    default = measure(inputs, scale, oracle, default_config)
    sdpa_ms = bench_ms(dense_sdpa(inputs, shape))
    checked = {"default": default_config, **({"best": timings[0].config} if timings else {})}
    ref_err = reference_error(inputs, scale, checked)
    return CaseResult(
        case, inputs.kv_bytes, default, sdpa_ms, timings, skipped, ref_err, time.perf_counter() - start
    )


def print_case(result: CaseResult) -> None:
    def row(label: str, ms: float, extra: str = "") -> None:
        print(f"  {label:<40} {ms:8.3f} ms {result.kv_bytes / ms / 1e6:8.1f} GB/s  {extra}")

    row("dense sdpa (contiguous K/V)", result.sdpa_ms)
    row(
        f"default  {result.default.config.label()}",
        result.default.ms,
        f"{result.default.ms / result.sdpa_ms:.2f}x sdpa",
    )
    print(f"  top {min(5, len(result.timings))} of {len(result.timings)} that ran (max |err| vs default):")
    for rank, timing in enumerate(result.timings[:5], 1):
        row(
            f"{rank}. {timing.config.label()}",
            timing.ms,
            f"{result.default.ms / timing.ms:.2f}x default, {timing.ms / result.sdpa_ms:.2f}x sdpa, "
            f"err {timing.max_err:.2g}",
        )
    wrong = [s for s in result.skipped if s.wrong]
    if wrong:
        print(f"  !! {len(wrong)} configs differ from the default's output (a kernel bug at those tiles):")
    for skip in wrong + [s for s in result.skipped if not s.wrong]:
        print(f"  {'WRONG' if skip.wrong else 'skipped'} {skip.config.label()}: {skip.reason}")
    for name, err in result.ref_err.items():
        if isinstance(err, str):
            print(f"  {name} vs paged_attention_ref: {err}")
        else:
            verdict = "ok" if err <= TOLERANCE[0] else "!! OVER"
            print(
                f"  {name} vs paged_attention_ref: max |err| {err:.3g} ({verdict} bf16 atol {TOLERANCE[0]})"
            )
    print(f"  elapsed {result.elapsed_s:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.tune_attention", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="about 12 configs per case instead of 27-72")
    parser.add_argument(
        "--json-out", type=Path, help="also write the final JSON here (rewritten after each case)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=min(12, os.cpu_count() or 1),
        help="processes that precompile configs; 0 compiles in the timing pass (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("kernels.tune_attention times Triton kernels and needs a CUDA GPU; none is visible here.")
    import triton

    start = time.perf_counter()
    summaries: dict[str, object] = {}
    report = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "quick": args.quick,
        "cases": summaries,
    }
    print(
        f"device: {report['device']}, torch {torch.__version__}, triton {triton.__version__}, {DTYPE}, "
        f"do_bench warmup {WARMUP_MS} ms rep {REP_MS} ms (median), {args.workers} compile processes",
        flush=True,
    )
    cases = build_cases(args.quick)
    # Spawned, not forked: a forked child cannot use its parent's CUDA context.
    pool = (
        ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
        if args.workers
        else None
    )
    try:
        for i, case in enumerate(cases, 1):
            count = len(case.tiles) + case.finalists * len(case.splits)
            print(f"\n[{i}/{len(cases)}] {case.shape.name}: {count} configs", flush=True)
            try:
                result = run_case(case, pool, args.workers)
                print_case(result)
                summaries[case.shape.name] = result.summary()
            except Exception as exc:  # the default config or the inputs: report, and keep the other cases
                print(f"  case failed: {failure(exc)}", flush=True)
                summaries[case.shape.name] = {"failed": failure(exc)}
            if args.json_out:
                args.json_out.write_text(json.dumps(report) + "\n")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    print(f"\ntotal {time.perf_counter() - start:.1f} s; best config per case:")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
