"""Prometheus metrics of the frontend, in a registry of its own so several apps can live in one process.

Two families of names: the frontend's own `frontend_*` metrics, by endpoint, and vLLM's request metrics
(`vllm:*`, as `vllm serve` names them in vllm/v1/metrics/loggers.py: names, types, help, buckets), so that
dashboards and alerts built on `vllm serve` work against this frontend unchanged. Their `model_name` label
is vLLM's: the first served model name, whichever of the served names or LoRA adapters a request used, so
that it is the same on every vllm:* series, the engine's included. vLLM's engine metrics (running, waiting,
KV cache, ...) are not kept here: they are read from Triton when /metrics is scraped
(frontend/engine_metrics.py) and rendered beside.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# vLLM's inter-token latency buckets up to 10 s (the frontend's histogram predates the vllm:* one).
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

# vLLM's own buckets, so that quantiles computed from either server agree.
VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)
VLLM_INTER_TOKEN_BUCKETS = (*INTER_TOKEN_BUCKETS, 20.0, 40.0, 80.0)
VLLM_REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)
# vLLM's token-count buckets are 1, 2, 5, 10, 20, 50, ... up to max_model_len, which the frontend may only
# learn from Triton later; up to a million covers every context, and a bucket past a model's context just
# stays empty.
VLLM_TOKEN_COUNT_MAX = 1_000_000


def one_two_five_buckets(max_value: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value` (vLLM's build_1_2_5_buckets)."""
    buckets: list[float] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return tuple(buckets)
            buckets.append(float(mantissa * scale))
        scale *= 10


class SequenceMetrics:
    """The per-response metrics of one generation's sequences, bound to their labels once
    (FrontendMetrics.sequences), so that a streamed token costs two histogram observations and a counter
    increment, no label lookups."""

    def __init__(
        self,
        frontend_inter_token_latency: Histogram,
        vllm_inter_token_latency: Histogram,
        vllm_time_to_first_token: Histogram,
        vllm_prompt_tokens: Counter,
        vllm_generation_tokens: Counter,
    ) -> None:
        self._frontend_inter_token_latency = frontend_inter_token_latency
        self._vllm_inter_token_latency = vllm_inter_token_latency
        self._vllm_time_to_first_token = vllm_time_to_first_token
        self._vllm_prompt_tokens = vllm_prompt_tokens
        self._vllm_generation_tokens = vllm_generation_tokens

    def started(self, prompt_tokens: int) -> None:
        """A sequence's first response arrived, its prompt of `prompt_tokens` prefilled (vLLM counts a
        request's prompt tokens then, not at its end)."""
        self._vllm_prompt_tokens.inc(prompt_tokens)

    def first_token(self, seconds: float) -> None:
        """A sequence's first token arrived `seconds` after its request."""
        self._vllm_time_to_first_token.observe(seconds)

    def next_token(self, seconds: float) -> None:
        """A sequence's next tokens arrived `seconds` after its previous ones."""
        self._frontend_inter_token_latency.observe(seconds)
        self._vllm_inter_token_latency.observe(seconds)

    def generated(self, tokens: int) -> None:
        """`tokens` more output tokens arrived (vLLM counts them as they are generated, not at the end, so
        that its throughput panels follow long requests and count those a client abandoned)."""
        self._vllm_generation_tokens.inc(tokens)


class _Alias(Collector):
    """A metric served a second time under another name (an older one of vLLM's, still on dashboards): the
    same observations, copied at scrape time rather than observed twice."""

    def __init__(self, source: Collector, name: str, documentation: str) -> None:
        self._source = source
        self._name = name
        self._documentation = documentation

    def collect(self) -> Iterable[Metric]:
        for family in self._source.collect():
            alias = Metric(self._name, self._documentation, family.type)
            alias.samples = [
                sample._replace(name=self._name + sample.name[len(family.name) :]) for sample in family.samples
            ]
            yield alias


class _Families(Collector):
    """Metric families computed elsewhere (the engine's, read from Triton), for one rendering."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class FrontendMetrics:
    """Request counts by endpoint and status, time to first token, inter-token and end-to-end latency, tokens;
    the same under vLLM's names, with vLLM's per-request histograms and finish reasons.

    A vLLM request is one sequence: vLLM runs a request of n choices as n engine requests, each counted in
    `vllm:request_success_total`, its prompt in `vllm:prompt_tokens_total`, its own first token in
    `vllm:time_to_first_token_seconds`. The frontend_* metrics count a generation (one Triton request) once.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "frontend_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=registry
        )
        self.time_to_first_token = Histogram(
            "frontend_time_to_first_token_seconds",
            "Seconds from request arrival to the first generated text.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        # Observed here, per token as the client receives it: the llm model observes only per request
        # (each of its metric updates is a round trip to tritonserver).
        self._inter_token_latency = Histogram(
            "frontend_inter_token_latency_seconds",
            "Seconds between consecutive responses carrying tokens of one sequence.",
            ["endpoint"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            "frontend_e2e_request_latency_seconds",
            "Seconds from request arrival to the last generated text.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._prompt_tokens = Counter("frontend_prompt_tokens", "Prompt tokens of finished requests.", registry=registry)
        self._generation_tokens = Counter(
            "frontend_generation_tokens", "Generated tokens of finished requests.", registry=registry
        )
        model = ["model_name"]
        self._vllm_time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            model,
            buckets=VLLM_TTFT_BUCKETS,
            registry=registry,
        )
        self._vllm_inter_token_latency = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            model,
            buckets=VLLM_INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        # Its name until vLLM 0.11, the same per-token observations.
        registry.register(
            _Alias(
                self._vllm_inter_token_latency,
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds. DEPRECATED: Use vllm:inter_token_latency_seconds "
                "instead.",
            )
        )
        self._vllm_e2e_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            model,
            buckets=VLLM_REQUEST_LATENCY_BUCKETS,
            registry=registry,
        )
        token_buckets = one_two_five_buckets(VLLM_TOKEN_COUNT_MAX)
        self._vllm_request_prompt_tokens = Histogram(
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            model,
            buckets=token_buckets,
            registry=registry,
        )
        self._vllm_request_generation_tokens = Histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            model,
            buckets=token_buckets,
            registry=registry,
        )
        self._vllm_prompt_tokens = Counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", model, registry=registry
        )
        self._vllm_generation_tokens = Counter(
            "vllm:generation_tokens", "Number of generation tokens processed.", model, registry=registry
        )
        self._vllm_request_success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            [*model, "finished_reason"],
            registry=registry,
        )

    def sequences(self, endpoint: str, model_name: str) -> SequenceMetrics:
        """The per-response metrics of a generation at `endpoint`, labelled `model_name` under vLLM's names;
        bound once per generation."""
        return SequenceMetrics(
            self._inter_token_latency.labels(endpoint),
            self._vllm_inter_token_latency.labels(model_name),
            self._vllm_time_to_first_token.labels(model_name),
            self._vllm_prompt_tokens.labels(model_name),
            self._vllm_generation_tokens.labels(model_name),
        )

    def sequence_finished(
        self, model_name: str, finish_reason: str, prompt_tokens: int, output_tokens: int, seconds: float
    ) -> None:
        """A sequence (vLLM's request) ended with `finish_reason`, `seconds` after its request; its tokens
        were counted as they came (SequenceMetrics)."""
        self._vllm_request_success.labels(model_name, finish_reason).inc()
        self._vllm_e2e_latency.labels(model_name).observe(seconds)
        self._vllm_request_prompt_tokens.labels(model_name).observe(prompt_tokens)
        self._vllm_request_generation_tokens.labels(model_name).observe(output_tokens)

    def request_finished(self, endpoint: str, prompt_tokens: int, output_tokens: int, seconds: float) -> None:
        """A request to the engine (a generation with all its sequences, or a pooling request with all its
        inputs) at `endpoint` ended `seconds` after it arrived."""
        self.e2e_latency.labels(endpoint).observe(seconds)
        self._prompt_tokens.inc(prompt_tokens)
        self._generation_tokens.inc(output_tokens)

    def pooling_finished(self, endpoint: str, model_name: str, input_tokens: list[int], seconds: float) -> None:
        """A pooling request (embeddings, classify, score, rerank) answered `seconds` after it arrived, its
        inputs of `input_tokens` tokens each. vLLM runs each input as a request of its own, ended by "stop"
        with nothing generated."""
        self.request_finished(endpoint, sum(input_tokens), 0, seconds)
        self._vllm_prompt_tokens.labels(model_name).inc(sum(input_tokens))
        for tokens in input_tokens:
            self.sequence_finished(model_name, "stop", tokens, 0, seconds)

    def render(self, engine: Iterable[Metric] = ()) -> bytes:
        """The exposition text of every metric here, then of `engine`'s families."""
        extra = CollectorRegistry()
        extra.register(_Families(engine))
        return generate_latest(self.registry) + generate_latest(extra)
