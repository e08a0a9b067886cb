"""Where one engine decode step's time goes: median step time, then a cProfile of the host side and, on
CUDA, the torch profiler's kernel table, for a running batch unconstrained and under a JSON schema. Not
a test.

    python -m benchmarks.step_profile --model DIR [--device auto] [--batch 16] [--steps 24]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import statistics
import time

import torch

from benchmarks.engine_bench import LONG_TEXT_SCHEMA, sync
from engine import EngineConfig, LLMEngine, SamplingParams
from engine.structured_output import StructuredOutputsParams


def start_batch(engine: LLMEngine, batch: int, constrained: bool, steps: int, tag: str) -> list[str]:
    """Queue `batch` 64-token prompts and step until every one of them decodes."""
    rng = random.Random(0)
    vocab_size = engine.runner.spec.vocab_size
    constraint = StructuredOutputsParams(json=LONG_TEXT_SCHEMA) if constrained else None
    params = SamplingParams(temperature=0.0, max_tokens=3 * steps + 16, ignore_eos=True, structured_outputs=constraint)
    ids = [f"{tag}-{i}" for i in range(batch)]
    for request_id in ids:
        engine.add_request(request_id, [rng.randrange(100, vocab_size) for _ in range(64)], params)
    started: set[str] = set()
    while len(started) < batch:
        started.update(output.request_id for output in engine.step())
    return ids


def timed_steps(engine: LLMEngine, steps: int) -> list[float]:
    timings = []
    for _ in range(steps):
        begin = time.perf_counter()
        engine.step()
        sync(engine.runner.device)
        timings.append(time.perf_counter() - begin)
    return timings


def profile(engine: LLMEngine, batch: int, steps: int, constrained: bool) -> None:
    kind = "JSON schema" if constrained else "unconstrained"
    ids = start_batch(engine, batch, constrained, steps, kind)
    median = statistics.median(timed_steps(engine, steps))
    print(f"\n## {kind}, batch {batch}: median step {median * 1000:.2f} ms over {steps} steps")
    host = cProfile.Profile()
    host.enable()
    timed_steps(engine, steps)
    host.disable()
    report = io.StringIO()
    pstats.Stats(host, stream=report).sort_stats("tottime").print_stats(14)
    print("host side, by own time (cProfile):")
    print("\n".join([line for line in report.getvalue().splitlines() if line.strip()][-16:]))
    if engine.runner.device.type == "cuda":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as device_profile:
            timed_steps(engine, steps)
        print("device side (torch profiler):")
        print(device_profile.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    for request_id in ids:
        engine.abort_request(request_id)
    engine.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, dtype=args.dtype, max_model_len=2048))
    print(f"engine on {engine.runner.device} ({engine.runner.dtype})")
    for constrained in (False, True):
        profile(engine, args.batch, args.steps, constrained)
    engine.shutdown()


if __name__ == "__main__":
    main()
