"""vLLM's metric names on the frontend's /metrics, offline: the engine's state converted from Triton's
exposition text (as tritonserver 2.51 writes the llm model's metrics), read over real HTTP from a local
server, and the request metrics the frontend keeps under vLLM's names and buckets."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncGenerator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from frontend.engine_metrics import EngineMetricsReader, engine_families
from frontend.metrics import VLLM_REQUEST_LATENCY_BUCKETS, VLLM_TTFT_BUCKETS, FrontendMetrics
from frontend.serving.generation import Generation, SequenceRecorder
from frontend.triton_client import GenerationChunk

# Two instances of llm (data parallel), a model of another name with metrics of the same names, and Triton's
# own: the label order, integer values and histogram layout are tritonserver's.
TRITON_TEXT = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="llm",version="1"} 12
nv_inference_request_success{model="embedder",version="1"} 3
# HELP llm_num_preemptions_total Requests preempted for KV space
# TYPE llm_num_preemptions_total counter
llm_num_preemptions_total{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 4
llm_num_preemptions_total{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 1
llm_num_preemptions_total{model="embedder",model_instance="embedder_0 (GPU device 2)",version="1"} 100
# HELP llm_prefix_cache_queries_total Prompt tokens looked up in the prefix cache
# TYPE llm_prefix_cache_queries_total counter
llm_prefix_cache_queries_total{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 1200
llm_prefix_cache_queries_total{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 800
# HELP llm_prefix_cache_hits_total Prompt tokens found in the prefix cache
# TYPE llm_prefix_cache_hits_total counter
llm_prefix_cache_hits_total{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 640
llm_prefix_cache_hits_total{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 128
# HELP llm_spec_decode_num_draft_tokens_total Speculative tokens proposed and verified
# TYPE llm_spec_decode_num_draft_tokens_total counter
llm_spec_decode_num_draft_tokens_total{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 40
llm_spec_decode_num_draft_tokens_total{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 24
# HELP llm_spec_decode_num_accepted_tokens_total Speculative tokens the model accepted
# TYPE llm_spec_decode_num_accepted_tokens_total counter
llm_spec_decode_num_accepted_tokens_total{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 30
llm_spec_decode_num_accepted_tokens_total{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 10
# HELP llm_num_requests_running Requests in the running batch
# TYPE llm_num_requests_running gauge
llm_num_requests_running{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 3
llm_num_requests_running{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 2
llm_num_requests_running{model="embedder",model_instance="embedder_0 (GPU device 2)",version="1"} 50
# HELP llm_num_requests_waiting Requests waiting to be scheduled
# TYPE llm_num_requests_waiting gauge
llm_num_requests_waiting{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 7
llm_num_requests_waiting{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 0
# HELP llm_kv_cache_usage_ratio Fraction of KV cache blocks in use
# TYPE llm_kv_cache_usage_ratio gauge
llm_kv_cache_usage_ratio{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 0.5
llm_kv_cache_usage_ratio{model="llm",model_instance="llm_0 (GPU device 1)",version="1"} 0.25
# HELP llm_time_to_first_token_seconds Time to first token
# TYPE llm_time_to_first_token_seconds histogram
llm_time_to_first_token_seconds_count{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 2
llm_time_to_first_token_seconds_sum{model="llm",model_instance="llm_0 (GPU device 0)",version="1"} 0.5
llm_time_to_first_token_seconds_bucket{model="llm",model_instance="llm_0 (GPU device 0)",version="1",le="0.5"} 2
llm_time_to_first_token_seconds_bucket{model="llm",model_instance="llm_0 (GPU device 0)",version="1",le="+Inf"} 2
"""

# What a vLLM dashboard reads from the engine of TRITON_TEXT's llm: sums, and the KV usage's mean.
ENGINE = {
    "vllm:num_requests_running": ("gauge", 5.0),
    "vllm:num_requests_waiting": ("gauge", 7.0),
    "vllm:kv_cache_usage_perc": ("gauge", 0.375),
    "vllm:gpu_cache_usage_perc": ("gauge", 0.375),
    "vllm:num_preemptions_total": ("counter", 5.0),
    "vllm:prefix_cache_queries_total": ("counter", 2000.0),
    "vllm:prefix_cache_hits_total": ("counter", 768.0),
    "vllm:spec_decode_num_draft_tokens_total": ("counter", 64.0),
    "vllm:spec_decode_num_accepted_tokens_total": ("counter", 40.0),
}


def engine_samples(text: str) -> dict[str, tuple[str, float]]:
    """The samples of `text` (parsed by prometheus_client) that the frontend's own metrics do not make: name ->
    (family type, value), each checked to carry the one label vLLM's engine metrics do."""
    own_text = FrontendMetrics().render().decode()
    own = {sample.name for family in text_string_to_metric_families(own_text) for sample in family.samples}
    parsed: dict[str, tuple[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in own:
                assert sample.name not in parsed and sample.labels == {"model_name": "Qwen3-14B"}, sample
                parsed[sample.name] = (family.type, sample.value)
    return parsed


def test_engine_state_is_combined_over_instances_and_renamed() -> None:
    text = FrontendMetrics().render(engine_families(TRITON_TEXT, "llm", "Qwen3-14B")).decode()
    assert engine_samples(text) == ENGINE


def test_metrics_triton_does_not_report_are_left_out() -> None:
    running = (
        "# HELP llm_num_requests_running Requests in the running batch\n"
        "# TYPE llm_num_requests_running gauge\n"
        'llm_num_requests_running{model="llm",model_instance="llm_0_0 (CPU device 0)",version="1"} 1\n'
    )
    families = engine_families(running, "llm", "Qwen3-14B")
    assert [family.name for family in families] == ["vllm:num_requests_running"]
    assert engine_families(TRITON_TEXT, "another_llm", "Qwen3-14B") == []


def test_text_without_the_llm_models_samples_gives_nothing_and_a_broken_sample_is_refused() -> None:
    assert engine_families("<html><body>not metrics</body></html>", "llm", "Qwen3-14B") == []
    with pytest.raises(ValueError):
        engine_families('llm_num_requests_running{model="llm",version="1" 3\n', "llm", "Qwen3-14B")


class _MetricsPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = TRITON_TEXT.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def metrics_server() -> Iterator[str]:
    """A real HTTP server answering TRITON_TEXT at any path: its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MetricsPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_reader_reads_triton_over_http(metrics_server: str) -> None:
    reader = EngineMetricsReader(metrics_server, "llm", "Qwen3-14B")
    text = FrontendMetrics().render(asyncio.run(reader.families())).decode()
    assert engine_samples(text) == ENGINE


def test_an_unreachable_triton_costs_the_engine_metrics_only(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/metrics"
    reader = EngineMetricsReader(url, "llm", "Qwen3-14B")
    with caplog.at_level(logging.WARNING, logger="frontend.engine_metrics"):
        assert asyncio.run(reader.families()) == []
        assert asyncio.run(reader.families()) == []
    # Said once while it stays away, not at every scrape.
    assert [record.levelno for record in caplog.records] == [logging.WARNING]
    assert url in caplog.records[0].getMessage()


def test_a_triton_that_never_answers_is_given_up_on_in_time_without_holding_up_the_event_loop() -> None:
    async def scrape_while_ticking(reader: EngineMetricsReader) -> int:
        """Ticks of a 10 ms timer on the event loop while `reader` reads (nothing, here)."""
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        assert await reader.families() == []
        ticker.cancel()
        return ticks

    # Accepts connections (the kernel's backlog) and never answers them.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        reader = EngineMetricsReader(url, "llm", "m", timeout_s=0.5)
        started = time.monotonic()
        # ~50 ticks in the 0.5 s it waits; none if the read blocked the loop that streams tokens.
        assert asyncio.run(scrape_while_ticking(reader)) >= 20
        assert time.monotonic() - started < 2.0


def test_offline_metrics_answer_without_the_engine(offline_client: TestClient) -> None:
    """The offline app's Triton, metrics port included, is unreachable: /metrics still answers, with the
    frontend's own metrics and vLLM's request metrics, and none of the engine's."""
    response = offline_client.get("/metrics", headers={"Authorization": ""})
    assert response.status_code == 200
    text = response.text
    assert "# TYPE frontend_requests_total counter" in text
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert "# TYPE vllm:request_success_total counter" in text
    assert "vllm:num_requests_running" not in text


async def _no_more_responses() -> AsyncGenerator[GenerationChunk, None]:
    return
    yield


def _response(index: int, tokens: list[int], output_tokens: int, finish_reason: str | None = None) -> GenerationChunk:
    """A response of sequence `index` of a 31-token prompt: `tokens` more, `output_tokens` so far."""
    return GenerationChunk(
        text="",
        token_ids=tokens,
        num_input_tokens=31,
        num_output_tokens=output_tokens,
        num_cached_tokens=0,
        finish_reason=finish_reason,
        final=False,
        index=index,
    )


def test_request_metrics_carry_vllm_names_labels_and_buckets() -> None:
    metrics = FrontendMetrics()
    # A chat generation of two sequences (n=2) arriving at 100 s: two vLLM requests, each with its prompt.
    first = _response(0, [1], 1)
    generation = Generation(first, _no_more_responses(), "/v1/chat/completions", 100.0, 100.03)
    recorder = SequenceRecorder(metrics, generation, "Qwen3-14B")
    responses = [
        (first, 100.03),
        (_response(1, [2], 1), 100.04),
        (_response(0, [3], 2), 100.05),
        (_response(0, [4, 5], 4), 100.09),
        (_response(1, [6], 2, "stop"), 100.10),
        (_response(0, [], 4, "length"), 100.20),
    ]
    for chunk, now in responses[:3]:
        recorder.response(chunk, now)

    def parsed() -> dict[str, Metric]:
        return {family.name: family for family in text_string_to_metric_families(metrics.render().decode())}

    def value(families: dict[str, Metric], family: str, sample: str, **labels: str) -> float:
        found = [s.value for s in families[family].samples if s.name == sample and s.labels == labels]
        assert len(found) == 1, (sample, labels, families[family].samples)
        return found[0]

    model = {"model_name": "Qwen3-14B"}
    # As in vLLM, a sequence's prompt counts once it is prefilled and its tokens as they come, not at its end.
    streaming = parsed()
    assert value(streaming, "vllm:prompt_tokens", "vllm:prompt_tokens_total", **model) == 31 + 31
    assert value(streaming, "vllm:generation_tokens", "vllm:generation_tokens_total", **model) == 3
    assert value(streaming, "vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_count", **model) == 2
    assert not streaming["vllm:request_success"].samples
    for chunk, now in responses[3:]:
        recorder.response(chunk, now)
    metrics.request_finished("/v1/chat/completions", prompt_tokens=31, output_tokens=6, seconds=0.2)
    # Two inputs of an embeddings request: two vLLM requests, ended by "stop", nothing generated.
    metrics.pooling_finished("/v1/embeddings", "Qwen3-14B", [5, 7], seconds=0.05)
    families = parsed()
    assert value(families, "vllm:request_success", "vllm:request_success_total", finished_reason="length", **model) == 1
    assert value(families, "vllm:request_success", "vllm:request_success_total", finished_reason="stop", **model) == 3
    assert value(families, "vllm:prompt_tokens", "vllm:prompt_tokens_total", **model) == 31 + 31 + 5 + 7
    assert value(families, "vllm:generation_tokens", "vllm:generation_tokens_total", **model) == 6
    assert value(families, "vllm:request_prompt_tokens", "vllm:request_prompt_tokens_count", **model) == 4
    assert value(families, "vllm:request_generation_tokens", "vllm:request_generation_tokens_sum", **model) == 6
    e2e = "vllm:e2e_request_latency_seconds"
    assert value(families, e2e, f"{e2e}_count", **model) == 4
    assert value(families, e2e, f"{e2e}_sum", **model) == pytest.approx(0.2 + 0.1 + 0.05 + 0.05)
    itl = "vllm:inter_token_latency_seconds"
    assert value(families, itl, f"{itl}_count", **model) == 3
    # vLLM's older name of the same histogram.
    tpot = "vllm:time_per_output_token_seconds"
    assert value(families, tpot, f"{tpot}_count", **model) == 3
    assert value(families, tpot, f"{tpot}_sum", **model) == pytest.approx(0.02 + 0.04 + 0.06)
    # The same observations under the frontend's name, by endpoint.
    frontend_itl = "frontend_inter_token_latency_seconds"
    assert value(families, frontend_itl, f"{frontend_itl}_count", endpoint="/v1/chat/completions") == 3
    assert value(families, "frontend_prompt_tokens", "frontend_prompt_tokens_total") == 31 + 12
    ttft = families["vllm:time_to_first_token_seconds"]
    assert [float(s.labels["le"]) for s in ttft.samples if s.name.endswith("_bucket")][:-1] == list(VLLM_TTFT_BUCKETS)
    e2e = families["vllm:e2e_request_latency_seconds"]
    bounds = [float(s.labels["le"]) for s in e2e.samples if s.name.endswith("_bucket")]
    assert bounds == [*VLLM_REQUEST_LATENCY_BUCKETS, float("inf")]
    tokens = families["vllm:request_prompt_tokens"]
    token_bounds = [float(s.labels["le"]) for s in tokens.samples if s.name.endswith("_bucket")]
    assert token_bounds[:7] == [1, 2, 5, 10, 20, 50, 100]
