"""The full served path (OpenAI frontend -> Triton llm model -> engine) against the engine alone, side by side.

    python -m benchmarks.serving_bench [--concurrency 1 4 16 64] [--plot runs/bench/concurrency.png]

Same seeded workload as benchmarks.engine_bench (prompts of 32-512 token ids, 16-256 output tokens,
ignore_eos, greedy). At each concurrency level the same requests run twice, one system after the other
on the same machine: through a real tritonserver + frontend started from the repository's profile
(streamed /v1/completions with token-id prompts), and through an in-process engine built from the same
profile with a driver that keeps the same number of requests in flight. Prints output tokens/s,
requests/s, TTFT and inter-token latency p50/p99 for both, the served/engine ratios, a JSON line, and a
PNG of throughput against concurrency; then the highest level served once more with a per-request
stream_interval (4 tokens a chunk by default), for what fewer messages buy. Not a test.

The TTFT the served path adds is measured on its own, by a probe of 30 distinct 32-token prompts sent one
at a time for one output token to each system, after a round of 30 others on each: a level's TTFT p50
rests on as few requests as the level is wide (2 at concurrency 1) and moves by more than the path adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.engine_bench import Workload, make_workload
from benchmarks.sse_client import post_events
from engine import LLMEngine, SamplingParams
from ensemble_configs.render import load_profile
from tests.servers import ROOT, start_frontend, start_triton
from triton_adapters.engine_settings import engine_config

PROFILE = ROOT / "ensemble_configs" / "profiles" / "cpu-default.yaml"
MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass
class RequestTiming:
    sent: float
    # Arrival time of each output token (a chunk carrying k tokens gives k equal stamps).
    token_times: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    system: str
    concurrency: int
    seconds: float
    timings: list[RequestTiming]

    @property
    def output_tokens(self) -> int:
        return sum(len(timing.token_times) for timing in self.timings)

    def ttfts(self) -> list[float]:
        return [timing.token_times[0] - timing.sent for timing in self.timings]

    def summary(self) -> dict[str, float]:
        ttfts = self.ttfts()
        # Gaps between distinct arrivals: tokens that came in one chunk share one gap.
        gaps = [
            later - earlier
            for timing in self.timings
            for earlier, later in zip(timing.token_times, timing.token_times[1:], strict=False)
            if later > earlier
        ]
        return {
            "output_tokens_per_s": round(self.output_tokens / self.seconds, 1),
            "requests_per_s": round(len(self.timings) / self.seconds, 3),
            "ttft_p50_ms": round(percentile(ttfts, 50) * 1000, 1),
            "ttft_p99_ms": round(percentile(ttfts, 99) * 1000, 1),
            "itl_p50_ms": round(percentile(gaps, 50) * 1000, 1),
            "itl_p99_ms": round(percentile(gaps, 99) * 1000, 1),
        }


def percentile(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_engine(engine: LLMEngine, workload: Workload, concurrency: int, ignore_eos: bool = True) -> RunResult:
    """Keep `concurrency` requests in the engine, adding the next one as soon as one finishes; greedy, each
    to its output length (or, without `ignore_eos`, to EOS if that comes first).

    A token is stamped when the text it belongs to is released, as a streaming client sees it: a step
    whose tokens release no text yet (part of a UTF-8 character) gets no event from the frontend, so its
    tokens reach the served side's client with the next text.
    """
    waiting = deque(range(len(workload.prompts)))
    timings: dict[int, RequestTiming] = {}
    # By request: tokens sampled whose text is not released yet.
    unreleased: dict[int, int] = {}
    in_flight = 0
    start = time.perf_counter()
    while waiting or in_flight:
        while waiting and in_flight < concurrency:
            index = waiting.popleft()
            params = SamplingParams(
                temperature=0.0, max_tokens=workload.output_lengths[index], ignore_eos=ignore_eos
            )
            engine.add_request(f"bench-{index}", workload.prompts[index], params)
            timings[index] = RequestTiming(time.perf_counter())
            in_flight += 1
        outputs = engine.step()
        now = time.perf_counter()
        for output in outputs:
            index = int(output.request_id.removeprefix("bench-"))
            count = unreleased.pop(index, 0) + len(output.new_token_ids)
            if output.text_delta or output.finished:
                timings[index].token_times += [now] * count
            else:
                unreleased[index] = count
            in_flight -= output.finished
    return RunResult("engine", concurrency, time.perf_counter() - start, list(timings.values()))


async def run_served(
    base_url: str,
    workload: Workload,
    concurrency: int,
    system: str = "served",
    extra_body: dict[str, object] | None = None,
) -> RunResult:
    """Stream /v1/completions (of any OpenAI-compatible server) with `concurrency` requests open at a time;
    `extra_body` adds fields to every request (vLLM's stream_interval, cache_salt, ...)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> RequestTiming:
        body = {
            "model": MODEL_NAME,
            "prompt": workload.prompts[index],
            "max_tokens": workload.output_lengths[index],
            "temperature": 0.0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        }
        body.update(extra_body or {})
        async with gate:
            timing = RequestTiming(time.perf_counter())
            seen = 0
            async for data in post_events(base_url, "/completions", body):
                event = json.loads(data)
                if "error" in event:
                    raise RuntimeError(event["error"])
                total = (event.get("usage") or {}).get("completion_tokens", seen)
                timing.token_times += [time.perf_counter()] * (total - seen)
                seen = total
            if seen != workload.output_lengths[index]:
                raise RuntimeError(f"request {index}: {seen} of {workload.output_lengths[index]} tokens")
            return timing

    start = time.perf_counter()
    timings = await asyncio.gather(*(one(index) for index in range(len(workload.prompts))))
    seconds = time.perf_counter() - start
    return RunResult(system, concurrency, seconds, list(timings))


def probe_workload(vocab_size: int, seed: int, count: int = 30, length: int = 32) -> Workload:
    """The TTFT probe: `count` distinct prompts of `length` token ids, one output token each."""
    rng = random.Random(seed + 1)
    prompts = [[rng.randrange(100, vocab_size) for _ in range(length)] for _ in range(count)]
    return Workload(prompts, [1] * count)


def level_workload(workload: Workload, concurrency: int, per_level: int) -> Workload:
    """The first requests of the workload: `per_level` x concurrency of them (at least 2), at most all."""
    count = min(len(workload.prompts), max(2, per_level * concurrency))
    return Workload(workload.prompts[:count], workload.output_lengths[:count])


def plot(results: list[tuple[RunResult, RunResult]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [served.concurrency for served, _ in results]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(levels, [s.summary()["output_tokens_per_s"] for s, _ in results], marker="o", label="served")
    axis.plot(levels, [e.summary()["output_tokens_per_s"] for _, e in results], marker="s", label="engine")
    axis.set_xscale("log", base=2)
    axis.set_xticks(levels, [str(level) for level in levels])
    axis.set_xlabel("concurrent requests")
    axis.set_ylabel("output tokens/s")
    axis.set_title("Throughput against concurrency")
    axis.grid(True, alpha=0.3)
    axis.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--num-requests", type=int, default=64, help="the workload; levels take a prefix")
    parser.add_argument("--per-level", type=int, default=1, help="requests per level = this x concurrency")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=4,
        help="the highest level once more, served with this stream_interval per request (0 skips it)",
    )
    parser.add_argument(
        "--plot", type=Path, default=ROOT / "runs" / "bench" / "throughput_vs_concurrency.png"
    )
    args = parser.parse_args()

    profile = load_profile(PROFILE)
    # The engine exactly as the profile's llm model builds it.
    engine = LLMEngine(engine_config(profile, str(ROOT / "model_repository" / "llm")))
    workload = make_workload(args.num_requests, engine.runner.spec.vocab_size, args.seed)
    probes = probe_workload(engine.runner.spec.vocab_size, args.seed)
    # A round of other prompts first, on both systems, is their warm-up: the served stack's first requests
    # after its start run slower (session 24: a probe p50 of 71 ms in the first round of 30 after the start,
    # 58 in the next two; the engine 52 in both), and the probe is after what the path adds to every request.
    warm_probes = probe_workload(engine.runner.spec.vocab_size, args.seed + 100)
    run_engine(engine, warm_probes, 1)
    engine_probe = run_engine(engine, probes, 1)
    engine_runs = {
        level: run_engine(engine, level_workload(workload, level, args.per_level), level)
        for level in args.concurrency
    }
    del engine

    results = []
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as logs:
        triton = start_triton(ROOT / "model_repository", Path(logs))
        try:
            frontend = start_frontend(ROOT / profile["model"], triton, Path(logs), api_key=None)
            try:
                asyncio.run(run_served(frontend.base_url, warm_probes, 1))
                served_probe = asyncio.run(run_served(frontend.base_url, probes, 1))
                for level in args.concurrency:
                    served = asyncio.run(
                        run_served(frontend.base_url, level_workload(workload, level, args.per_level), level)
                    )
                    results.append((served, engine_runs[level]))
                grouped = None
                if args.stream_interval:
                    # The same requests as the top level, from a cold cache (their own cache_salt): no
                    # prompt is a hit, where the top level found the levels before it cached.
                    top = max(args.concurrency)
                    extra = {"stream_interval": args.stream_interval, "cache_salt": "stream-interval-level"}
                    grouped = asyncio.run(
                        run_served(frontend.base_url, level_workload(workload, top, args.per_level), top,
                                   f"interval {args.stream_interval}", extra_body=extra)
                    )  # fmt: skip
            finally:
                frontend.process.stop()
        finally:
            triton.process.stop()

    header = f"{'concurrency':>11} {'system':>7} {'requests':>8} {'tok/s':>7} {'req/s':>6} "
    header += f"{'TTFT p50':>9} {'p99':>8} {'ITL p50':>8} {'p99':>7}  (ms)"
    print(f"served path vs engine alone, {profile['dtype']} on {profile['device']}, profile {PROFILE.name}")
    print(header)
    report = []
    for served, alone in results:
        for run in (served, alone):
            s = run.summary()
            print(
                f"{run.concurrency:>11} {run.system:>7} {len(run.timings):>8} {s['output_tokens_per_s']:>7} "
                f"{s['requests_per_s']:>6} {s['ttft_p50_ms']:>9} {s['ttft_p99_ms']:>8} {s['itl_p50_ms']:>8} "
                f"{s['itl_p99_ms']:>7}"
            )
        served_summary, engine_summary = served.summary(), alone.summary()
        ratio = served_summary["output_tokens_per_s"] / engine_summary["output_tokens_per_s"]
        added_ttft = served_summary["ttft_p50_ms"] - engine_summary["ttft_p50_ms"]
        print(f"{'':>11} served/engine throughput {ratio:.3f}, added TTFT p50 {added_ttft:+.1f} ms")
        report.append(
            {
                "concurrency": served.concurrency,
                "requests": len(served.timings),
                "served": served_summary,
                "engine": engine_summary,
                "served_over_engine_throughput": round(ratio, 3),
                "added_ttft_p50_ms": round(added_ttft, 1),
            }
        )
    grouped_report = None
    if grouped is not None:
        s = grouped.summary()
        ratio = s["output_tokens_per_s"] / engine_runs[grouped.concurrency].summary()["output_tokens_per_s"]
        print(
            f"{grouped.concurrency:>11} streams, stream_interval {args.stream_interval}: served "
            f"{s['output_tokens_per_s']} tok/s, {ratio:.3f} of the engine (ITL p50 {s['itl_p50_ms']} ms: one "
            f"chunk per {args.stream_interval} tokens)"
        )
        grouped_report = {"concurrency": grouped.concurrency, "stream_interval": args.stream_interval,
                          "served": s, "served_over_engine_throughput": round(ratio, 3)}  # fmt: skip
    probe = {
        "requests": len(probes.prompts),
        "served_ttft_p50_ms": round(percentile(served_probe.ttfts(), 50) * 1000, 1),
        "engine_ttft_p50_ms": round(percentile(engine_probe.ttfts(), 50) * 1000, 1),
    }
    probe["added_ttft_p50_ms"] = round(probe["served_ttft_p50_ms"] - probe["engine_ttft_p50_ms"], 1)
    print(
        f"TTFT one request at a time ({len(probes.prompts)} prompts of 32 tokens, 1 output token): served p50 "
        f"{probe['served_ttft_p50_ms']} ms, engine p50 {probe['engine_ttft_p50_ms']} ms, "
        f"added by the served path {probe['added_ttft_p50_ms']:+.1f} ms"
    )
    plot(results, args.plot)
    print(f"plot: {args.plot}")
    print(json.dumps({"benchmark": "serving", "profile": PROFILE.name, "ttft_probe": probe, "levels": report,
                      "stream_interval_level": grouped_report}))  # fmt: skip


if __name__ == "__main__":
    main()
