"""Prometheus metrics of the frontend, in a registry of its own so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# vLLM's inter-token latency buckets.
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class FrontendMetrics:
    """Request counts by endpoint and status, time to first token, inter-token and end-to-end latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "frontend_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "frontend_time_to_first_token_seconds",
            "Seconds from request arrival to the first generated text.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # Observed here, per token as the client receives it: the llm model observes only per request
        # (each of its metric updates is a round trip to tritonserver).
        self.inter_token_latency = Histogram(
            "frontend_inter_token_latency_seconds",
            "Seconds between consecutive responses carrying tokens of one sequence.",
            ["endpoint"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.e2e_latency = Histogram(
            "frontend_e2e_request_latency_seconds",
            "Seconds from request arrival to the last generated text.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "frontend_prompt_tokens", "Prompt tokens of finished requests.", registry=self.registry
        )
        self.generation_tokens = Counter(
            "frontend_generation_tokens", "Generated tokens of finished requests.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
