"""Where the CPU goes when the full served path runs flat out: CPU seconds of every process, side by side.

    python -m benchmarks.served_cpu [--concurrency 64] [--num-requests 64] [--dtype bfloat16]

Starts tritonserver (the checked-in model repository, or its profile rendered in --dtype) and the frontend, then streams the seeded workload of
benchmarks.engine_bench (prompts of 32-512 token ids, 16-256 output tokens, ignore_eos, greedy) through
/v1/completions from a cold prefix cache. Prints output tokens/s, TTFT p50 and, for tritonserver, each of
its Python-backend model processes, the frontend and this benchmark's own client, the CPU seconds the run
took and the CPU per output token, the busiest threads of the llm model's process, then a JSON line. On a machine whose cores are all busy, the served
path's throughput is the engine's work plus everything else in this table. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.engine_bench import Workload, make_workload
from benchmarks.peer_bench import our_repository
from benchmarks.serving_bench import MODEL_NAME, run_served
from tests.servers import ROOT, ServerProcess, start_frontend, start_triton, stub_pids

CHECKPOINT = ROOT / "models" / MODEL_NAME
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: Path) -> float:
    """User plus system CPU seconds from a /proc stat file (a process's: all its threads; or one thread's)."""
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    # After the command name: state is field 3 of stat(5), utime and stime fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_cpu_seconds(pid: int) -> float:
    return cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    return {int(task.name): cpu_seconds(task / "stat") for task in Path(f"/proc/{pid}/task").iterdir()}


def model_processes(triton_pid: int) -> dict[str, int]:
    """tritonserver's Python-backend stubs by model name (their first argument is the model's model.py)."""
    return {Path(cmdline.split(" ")[1]).parents[1].name: pid for pid, cmdline in stub_pids(triton_pid).items()}


def pid_of(server: ServerProcess) -> int:
    assert server.process is not None, f"{server.name} is not running"
    return server.process.pid


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="the engine's dtype")
    args = parser.parse_args()

    vocab_size = int(json.loads((CHECKPOINT / "config.json").read_text())["vocab_size"])
    workload = make_workload(args.num_requests, vocab_size, args.seed)
    with tempfile.TemporaryDirectory(prefix="served-cpu-") as logs:
        repository = our_repository(args.dtype, stream_interval=1, directory=ROOT / "runs" / "bench")
        triton = start_triton(repository, Path(logs))
        try:
            frontend = start_frontend(CHECKPOINT, triton, Path(logs), api_key=None)
            try:
                # Warm-up on a prompt of its own, so that the workload's prompts start uncached.
                warm = make_workload(1, vocab_size, args.seed + 1)
                asyncio.run(run_served(frontend.base_url, Workload([warm.prompts[0][:32]], [2]), 1))
                triton_pid = pid_of(triton.process)
                processes = {"tritonserver": triton_pid, **model_processes(triton_pid)}
                processes["frontend"] = pid_of(frontend.process)
                before = {name: process_cpu_seconds(pid) for name, pid in processes.items()}
                llm_threads_before = thread_cpu_seconds(processes["llm"])
                client_before = own_cpu_seconds()
                start = time.perf_counter()
                result = asyncio.run(run_served(frontend.base_url, workload, args.concurrency))
                wall = time.perf_counter() - start
                used = {name: process_cpu_seconds(pid) - before[name] for name, pid in processes.items()}
                used["client"] = own_cpu_seconds() - client_before
                llm_threads = thread_cpu_seconds(processes["llm"])
                # Threads are unnamed (they all show the stub's name): the busiest first.
                llm_thread_seconds = sorted(
                    (seconds - llm_threads_before.get(tid, 0.0) for tid, seconds in llm_threads.items()),
                    reverse=True,
                )
            finally:
                frontend.process.stop()
        finally:
            triton.process.stop()

    summary = result.summary()
    tokens = result.output_tokens
    print(
        f"served at concurrency {args.concurrency}: {tokens} output tokens in {wall:.1f} s, "
        f"{summary['output_tokens_per_s']} tok/s, TTFT p50 {summary['ttft_p50_ms']} ms; "
        f"{os.cpu_count()} cores x {wall:.1f} s = {os.cpu_count() * wall:.1f} CPU seconds available"
    )
    print(f"{'process':>14} {'CPU s':>7} {'ms/token':>9}")
    for name, seconds in used.items():
        print(f"{name:>14} {seconds:7.1f} {1000 * seconds / tokens:9.3f}")
    print(f"{'all':>14} {sum(used.values()):7.1f} {1000 * sum(used.values()) / tokens:9.3f}")
    busiest = ", ".join(f"{seconds:.2f}" for seconds in llm_thread_seconds[:4])
    print(f"llm's busiest threads (engine loop, OpenMP worker, response sender, ...): {busiest} CPU s")
    report = {
        "benchmark": "served_cpu",
        "concurrency": args.concurrency,
        "output_tokens": tokens,
        "seconds": round(wall, 2),
        "output_tokens_per_s": summary["output_tokens_per_s"],
        "ttft_p50_ms": summary["ttft_p50_ms"],
        "cpu_seconds": {name: round(seconds, 2) for name, seconds in used.items()},
        "llm_busiest_thread_cpu_seconds": [round(seconds, 2) for seconds in llm_thread_seconds[:4]],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
