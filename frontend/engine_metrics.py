"""vLLM's engine metrics (`vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, ...), read from the llm
model's own metrics on Triton's metrics port each time the frontend's /metrics is scraped.

The engine's state lives in the llm model's processes, which publish it to tritonserver (triton_adapters/
llm_metrics.py); the frontend holds none of it, so it asks Triton at scrape time and renames. With several
llm instances (data parallel: each its own engine, with its own series on Triton) the engine is their sum:
request counts and counters add up, and KV cache usage is their mean: every instance of one model has a KV
pool of the same size, so the mean is the fraction of all KV blocks in use (what vLLM's own log line reports
for several engines), and it stays within 0..1 where alerts on `> 0.9` expect it. A Triton that does not
answer costs the scrape these metrics only, never the frontend's own.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

logger = logging.getLogger(__name__)

# How long a scrape of /metrics waits for Triton's: Prometheus's own scrape timeout is 10 s by default, and
# Triton answers in milliseconds when it answers at all.
TRITON_SCRAPE_TIMEOUT_S = 1.0
# Triton's metrics are on its own (internal) port: never through an HTTP proxy of the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Combine(Enum):
    """How the series of several llm instances make the engine's one value."""

    SUM = "sum"
    MEAN = "mean"


@dataclass(frozen=True)
class EngineMetric:
    """One vLLM engine metric and the llm model's metric it is read from."""

    # vLLM's name, as prometheus_client takes it (a counter's without `_total`, which rendering adds).
    name: str
    # vLLM's help text.
    documentation: str
    # The llm model's sample name on Triton's metrics port.
    source: str
    # True: a counter; False: a gauge.
    counter: bool
    combine: Combine = Combine.SUM


ENGINE_METRICS = (
    EngineMetric(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        "llm_num_requests_running",
        counter=False,
    ),
    EngineMetric(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        "llm_num_requests_waiting",
        counter=False,
    ),
    EngineMetric(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        "llm_kv_cache_usage_ratio",
        counter=False,
        combine=Combine.MEAN,
    ),
    # vLLM's name for it before 0.10, still on dashboards.
    EngineMetric(
        "vllm:gpu_cache_usage_perc",
        "GPU KV-cache usage. 1 means 100 percent usage. DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
        "llm_kv_cache_usage_ratio",
        counter=False,
        combine=Combine.MEAN,
    ),
    EngineMetric(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        "llm_num_preemptions_total",
        counter=True,
    ),
    EngineMetric(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        "llm_prefix_cache_queries_total",
        counter=True,
    ),
    EngineMetric(
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        "llm_prefix_cache_hits_total",
        counter=True,
    ),
    EngineMetric(
        "vllm:spec_decode_num_draft_tokens",
        "Number of draft tokens.",
        "llm_spec_decode_num_draft_tokens_total",
        counter=True,
    ),
    EngineMetric(
        "vllm:spec_decode_num_accepted_tokens",
        "Number of accepted tokens.",
        "llm_spec_decode_num_accepted_tokens_total",
        counter=True,
    ),
)


# The llm model's samples ENGINE_METRICS read: Triton's exposition is mostly other models' and its own
# metrics, and prometheus_client's parser takes ~20 us a line (a 177-line exposition: 3.6 ms), so the
# lines of these samples are picked out before parsing.
_SOURCE_LINES = tuple(f"{metric.source}{end}" for metric in ENGINE_METRICS for end in ("{", " "))


def engine_families(exposition: str, triton_model: str, model_name: str) -> list[Metric]:
    """vLLM's engine metrics, labelled `model_name`, from Triton's metrics text `exposition`: the series of
    Triton model `triton_model` (any version, every instance), combined as each metric says. A metric whose
    source Triton does not report (yet) is left out. Raises ValueError on a source's sample that does not
    parse."""
    sources = "".join(line + "\n" for line in exposition.splitlines() if line.startswith(_SOURCE_LINES))
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(sources):
        for sample in family.samples:
            if sample.labels.get("model") == triton_model:
                values.setdefault(sample.name, []).append(sample.value)
    families: list[Metric] = []
    for metric in ENGINE_METRICS:
        found = values.get(metric.source)
        if not found:
            continue
        value = sum(found) if metric.combine is Combine.SUM else sum(found) / len(found)
        kind = CounterMetricFamily if metric.counter else GaugeMetricFamily
        family = kind(metric.name, metric.documentation, labels=["model_name"])
        family.add_metric([model_name], value)
        families.append(family)
    return families


class EngineMetricsReader:
    """Reads vLLM's engine metrics from Triton's metrics endpoint, once per scrape of the frontend's /metrics."""

    def __init__(
        self, url: str, triton_model: str, model_name: str, timeout_s: float = TRITON_SCRAPE_TIMEOUT_S
    ) -> None:
        self.url = url
        self.triton_model = triton_model
        self.model_name = model_name
        self.timeout_s = timeout_s
        # Whether the latest read succeeded: a Triton that stays away is logged once, not at every scrape.
        self._answered = True
        # Reads wait for Triton here, not in asyncio's default executor (a few threads, which tokenize
        # prompts): a Triton that does not answer holds one thread, whatever the rate of scrapes.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="triton-metrics")

    async def families(self) -> list[Metric]:
        """The engine's metrics now; none (and a log line when it stops answering) while Triton's metrics
        cannot be read within the timeout. Read and parsed in a thread of its own, off the event loop that
        streams tokens."""
        read = asyncio.get_running_loop().run_in_executor(self._executor, self._read)
        try:
            families = await asyncio.wait_for(read, self.timeout_s)
        except (OSError, http.client.HTTPException, ValueError) as error:
            if self._answered:
                logger.warning(
                    "Triton's metrics at %s cannot be read (%s): /metrics serves the frontend's own metrics "
                    "without the engine's until they can",
                    self.url,
                    str(error) or type(error).__name__,
                )
            self._answered = False
            return []
        if not self._answered:
            logger.info("Triton's metrics at %s answer again", self.url)
        self._answered = True
        return families

    def _read(self) -> list[Metric]:
        with _OPENER.open(self.url, timeout=self.timeout_s) as response:
            text = response.read().decode("utf-8")
        return engine_families(text, self.triton_model, self.model_name)
