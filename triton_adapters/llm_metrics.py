"""The llm model's custom metrics on Triton's metrics port (pb_utils.MetricFamily).

Every metric update is a round trip from the stub process to tritonserver, so nothing here is updated
per token: the token counters follow the engine's own totals, published with its other statistics
every STATS_PERIOD_SECONDS (llm's sender thread), and the latency histograms are observed once per
request. Two updates per streamed token (the token counter and an inter-token latency histogram) cost
64 streams on 2 cores ~0.05-0.1 ms of CPU a token between tritonserver and the stub (tritonserver
0.18-0.21 -> 0.13-0.17 ms, the sender thread 0.16-0.18 -> 0.125-0.15).

The backend utils module is passed in rather than imported, so this file stays importable (and
type-checkable) outside the Python backend stub.
"""

from __future__ import annotations

from typing import Any

from engine import EngineStats

LATENCY_BUCKETS = [0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0]
FINISH_REASONS = ("stop", "length", "abort")


class LLMMetrics:
    """Counters, gauges and histograms labelled with the model name, version and instance.

    The `model_instance` label keeps each instance's series its own: tritonserver hands every instance that
    asks for a metric of the same name and labels one shared series (seen with two instances of a Python
    model on Triton 2.51: one series, the value of whichever set it last), so the gauges of two engines (data
    parallel) would overwrite each other. It names an instance as tritonserver's log does ("llm_0_0 (CPU
    device 0)"): an instance group's name alone is the same on each of its GPUs. Not `instance`: Prometheus
    gives that label to every scraped target.
    """

    def __init__(self, pb_utils: Any, model_name: str, version: str, instance: str) -> None:
        self._labels = {"model": model_name, "version": version, "model_instance": instance}
        family = pb_utils.MetricFamily
        self._families: list[Any] = []

        def metric(name: str, description: str, kind: Any, **extra: Any) -> Any:
            created = family(name=name, description=description, kind=kind)
            self._families.append(created)
            return created.Metric(labels=dict(self._labels, **extra.pop("labels", {})), **extra)

        self.prompt_tokens = metric("llm_prompt_tokens_total", "Prompt tokens received", family.COUNTER)
        self.generation_tokens = metric("llm_generation_tokens_total", "Tokens generated", family.COUNTER)
        self.time_to_first_token = metric(
            "llm_time_to_first_token_seconds",
            "Time to first token",
            family.HISTOGRAM,
            buckets=LATENCY_BUCKETS,
        )
        self.time_per_output_token = metric(
            "llm_request_time_per_output_token_seconds",
            "A request's mean time between output tokens, after its first",
            family.HISTOGRAM,
            buckets=LATENCY_BUCKETS,
        )
        finished = family(
            name="llm_requests_finished_total", description="Finished requests", kind=family.COUNTER
        )
        self._families.append(finished)
        self._finished = {
            reason: finished.Metric(labels=dict(self._labels, finish_reason=reason))
            for reason in FINISH_REASONS
        }
        self.running = metric("llm_num_requests_running", "Requests in the running batch", family.GAUGE)
        self.waiting = metric("llm_num_requests_waiting", "Requests waiting to be scheduled", family.GAUGE)
        self.kv_usage = metric("llm_kv_cache_usage_ratio", "Fraction of KV cache blocks in use", family.GAUGE)
        # vLLM's prefix_cache_queries / prefix_cache_hits: their rates' ratio is the hit rate over any window.
        self.prefix_cache_queries = metric(
            "llm_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache", family.COUNTER
        )
        self.prefix_cache_hits = metric(
            "llm_prefix_cache_hits_total", "Prompt tokens found in the prefix cache", family.COUNTER
        )
        self.preemptions = metric(
            "llm_num_preemptions_total", "Requests preempted for KV space", family.COUNTER
        )
        # Speculative decoding (vLLM's spec_decode_num_draft_tokens / num_accepted_tokens); zero without it.
        self.spec_draft_tokens = metric(
            "llm_spec_decode_num_draft_tokens_total", "Speculative tokens proposed and verified", family.COUNTER
        )
        self.spec_accepted_tokens = metric(
            "llm_spec_decode_num_accepted_tokens_total", "Speculative tokens the model accepted", family.COUNTER
        )
        # Each counter that follows one of the engine's cumulative totals, and the total it has published.
        self._published: dict[str, float] = {}

    def count_finished(self, finish_reason: str) -> None:
        self._finished.get(finish_reason, self._finished["abort"]).increment(1)

    def publish_stats(self, stats: EngineStats) -> None:
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        used = stats.kv_blocks_total - stats.kv_blocks_free
        self.kv_usage.set(used / stats.kv_blocks_total if stats.kv_blocks_total else 0.0)
        self._follow("prefix_cache_queries", self.prefix_cache_queries, stats.prefix_cache_queried_tokens)
        self._follow("prefix_cache_hits", self.prefix_cache_hits, stats.prefix_cache_hit_tokens)
        self._follow("preemptions", self.preemptions, stats.num_preemptions)
        self._follow("prompt_tokens", self.prompt_tokens, stats.prompt_tokens_total)
        self._follow("generation_tokens", self.generation_tokens, stats.generation_tokens_total)
        self._follow("spec_draft_tokens", self.spec_draft_tokens, stats.spec_draft_tokens_total)
        self._follow("spec_accepted_tokens", self.spec_accepted_tokens, stats.spec_accepted_tokens_total)

    def _follow(self, name: str, counter: Any, total: int) -> None:
        """Advance `counter` to the engine's cumulative `total` (one update, only when it moved)."""
        published = self._published.get(name, 0)
        if total > published:
            counter.increment(total - published)
            self._published[name] = total
