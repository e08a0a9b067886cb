"""Full-scale load: 256 concurrent streamed greedy chats through a real frontend and tritonserver, then a
storm of 100 streams dropped at random points.

    python -m benchmarks.load_bench [--streams 256] [--max-tokens 24] [--dropped 100]

The suite runs the same check at a scale CI affords (tests/reliability/test_load.py). Every stream must
complete or fail with a clear error; each completed stream is checked token by token (its logprob entries
against usage.completion_tokens, their texts against the content) and compared with the non-streamed
greedy answer to its prompt. Afterwards the engine must be idle with every KV block free, and the servers'
memory must come back near its baseline. Then `--dropped` streams are opened and abandoned after a random
number of chunks: the engine must again end idle with every block free, and serve the next request.
Prints requests, tokens, errors, latency p50/p99, peak RSS and a JSON line. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks.serving_bench import percentile
from tests.reliability.load_client import (
    MODEL_NAME,
    TOPICS,
    StreamedChoice,
    disconnect_storm,
    engine_idle,
    greedy_answer,
    stream_problem,
    streamed_choice,
    tree_rss_bytes,
)
from tests.servers import ROOT, start_frontend, start_triton

API_KEY = "load-bench"


@dataclass
class StreamOutcome:
    topic: str
    latency_s: float
    choice: StreamedChoice | None = None
    error: str | None = None


class PeakMemory:
    """Samples the summed RSS of some process trees in a thread until stopped; keeps the peak."""

    def __init__(self, pids: list[int], interval_s: float = 0.25) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        return sum(tree_rss_bytes(pid) for pid in self.pids)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.current())
            self._stop.wait(self.interval_s)


async def run_load(base_url: str, streams: int, max_tokens: int) -> tuple[dict[str, str], list[StreamOutcome]]:
    """The non-streamed greedy answer of each topic, then all streams at once."""
    limits = httpx.Limits(max_connections=streams + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        expected = {topic: await greedy_answer(client, API_KEY, topic, max_tokens) for topic in TOPICS}

        async def one(index: int) -> StreamOutcome:
            topic = TOPICS[index % len(TOPICS)]
            started = time.perf_counter()
            try:
                choice = await streamed_choice(client, API_KEY, topic, max_tokens)
            except (AssertionError, httpx.HTTPError) as error:
                return StreamOutcome(topic, time.perf_counter() - started, error=repr(error)[:300])
            return StreamOutcome(topic, time.perf_counter() - started, choice=choice)

        outcomes = await asyncio.gather(*(one(index) for index in range(streams)))
    return expected, list(outcomes)


async def answer_after_storm(base_url: str, streams: int) -> str:
    """The storm of dropped streams, then the content of one more request."""
    await disconnect_storm(base_url, API_KEY, streams)
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        return await greedy_answer(client, API_KEY, "the sea")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--dropped", type=int, default=100, help="streams of the disconnect storm")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="load-bench-") as logs:
        triton = start_triton(ROOT / "model_repository", Path(logs))
        try:
            frontend = start_frontend(ROOT / "models" / MODEL_NAME, triton, Path(logs), api_key=API_KEY)
            try:
                assert triton.process.process is not None and frontend.process.process is not None
                pids = [triton.process.process.pid, frontend.process.process.pid]
                with PeakMemory(pids) as memory:
                    baseline = memory.current()
                    started = time.perf_counter()
                    expected, outcomes = asyncio.run(run_load(frontend.base_url, args.streams, args.max_tokens))
                    elapsed = time.perf_counter() - started
                    idle = engine_idle(triton.metrics_url, timeout=60)
                    after = memory.current()
                peak = memory.peak
                after_storm = asyncio.run(answer_after_storm(frontend.base_url, args.dropped))
                idle_after_storm = engine_idle(triton.metrics_url, timeout=60)
            finally:
                frontend.process.stop()
        finally:
            triton.process.stop()

    completed = [outcome for outcome in outcomes if outcome.choice is not None]
    problems = Counter(
        problem for outcome in completed if outcome.choice and (problem := stream_problem(outcome.choice))
    )
    errors = Counter(outcome.error for outcome in outcomes if outcome.error)
    matching = sum(
        outcome.choice.text == expected[outcome.topic] for outcome in completed if outcome.choice is not None
    )
    tokens = sum(outcome.choice.completion_tokens for outcome in completed if outcome.choice is not None)
    latencies = [outcome.latency_s * 1000 for outcome in completed]
    result = {
        "benchmark": "load",
        "streams": args.streams,
        "max_tokens": args.max_tokens,
        "completed": len(completed),
        "errors": sum(errors.values()),
        "inexact_streams": sum(problems.values()),
        "matching_non_streamed_greedy": matching,
        "output_tokens": tokens,
        "seconds": round(elapsed, 2),
        "output_tokens_per_s": round(tokens / elapsed, 1),
        "latency_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "latency_p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "engine_idle_after": idle,
        "rss_baseline_mib": round(baseline / 2**20),
        "rss_peak_mib": round(peak / 2**20),
        "rss_after_mib": round(after / 2**20),
        "dropped_streams": args.dropped,
        "engine_idle_after_drops": idle_after_storm,
        "served_after_drops": bool(after_storm),
    }
    print(f"load: {args.streams} concurrent streamed chats, greedy, max_tokens {args.max_tokens}")
    print(
        f"completed {result['completed']}, errors {result['errors']}, inexact streams {result['inexact_streams']}, "
        f"equal to the non-streamed answer {matching}/{len(completed)}"
    )
    print(
        f"{tokens} output tokens in {elapsed:.1f} s ({result['output_tokens_per_s']} tok/s); request latency "
        f"p50 {result['latency_p50_ms']} ms, p99 {result['latency_p99_ms']} ms"
    )
    print(
        f"RSS of tritonserver (with its stubs) and the frontend: baseline {result['rss_baseline_mib']} MiB, "
        f"peak {result['rss_peak_mib']} MiB, after {result['rss_after_mib']} MiB; engine idle after: {idle}"
    )
    print(
        f"disconnect storm: {args.dropped} streams dropped mid-way; engine idle after: {idle_after_storm}; "
        f"next request answered: {bool(after_storm)}"
    )
    for message, count in [*errors.most_common(3), *problems.most_common(3)]:
        print(f"  {count} x {message}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
