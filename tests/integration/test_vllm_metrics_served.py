"""vLLM's metric names on the frontend's /metrics, on the session's tritonserver and frontend: requests sent
through the official OpenAI SDK show up under vllm:* as they were answered, and the engine's state is what
the llm model reports on Triton's metrics port, renamed."""

from __future__ import annotations

import time
import urllib.request

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.frontend.conftest import MODEL_NAME
from tests.servers import FrontendServer, TritonServer

pytestmark = pytest.mark.slow

MODEL = {"model_name": MODEL_NAME}
# The engine's metrics on the frontend and the llm model's metric each is read from (one llm instance here).
ENGINE = {
    "vllm:num_requests_running": "llm_num_requests_running",
    "vllm:num_requests_waiting": "llm_num_requests_waiting",
    "vllm:kv_cache_usage_perc": "llm_kv_cache_usage_ratio",
    "vllm:num_preemptions_total": "llm_num_preemptions_total",
    "vllm:prefix_cache_queries_total": "llm_prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total": "llm_prefix_cache_hits_total",
    "vllm:spec_decode_num_draft_tokens_total": "llm_spec_decode_num_draft_tokens_total",
}

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def series(text: str) -> Series:
    """Every sample of an exposition, parsed by prometheus_client: (name, labels) -> value."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Series, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def frontend_series(frontend: FrontendServer) -> Series:
    response = httpx.get(f"{frontend.root_url}/metrics", timeout=10)
    assert response.status_code == 200
    return series(response.text)


def triton_series(triton: TritonServer) -> Series:
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        return series(response.read().decode())


def idle_series(frontend: FrontendServer) -> Series:
    """The frontend's metrics once the engine has had nothing running or waiting for over a second (the llm
    model publishes its state every 0.5 s), so that no request of an earlier test (one its client left, still
    being aborted) lands between two scrapes of this one."""
    deadline = time.monotonic() + 30.0
    idle_since = None
    while time.monotonic() < deadline:
        scraped = frontend_series(frontend)
        busy = value(scraped, "vllm:num_requests_running", **MODEL) + value(scraped, "vllm:num_requests_waiting", **MODEL)
        idle_since = None if busy else idle_since or time.monotonic()
        if idle_since is not None and time.monotonic() - idle_since > 1.2:
            return scraped
        time.sleep(0.2)
    raise AssertionError("the engine did not go idle within 30 s")


def test_requests_show_up_under_vllm_names(frontend_server: FrontendServer) -> None:
    client = openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)
    before = idle_series(frontend_server)
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=5,
        n=2,
        extra_body={"ignore_eos": True},
    )
    stream = client.completions.create(
        model=MODEL_NAME,
        prompt="The capital of France is",
        max_tokens=4,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    completion_usage = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    after = frontend_series(frontend_server)
    assert chat.usage is not None and chat.usage.completion_tokens == 10 and completion_usage.completion_tokens == 4

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Each of the chat's two choices is a vLLM request of its own, the prompt counted with each.
    assert delta("vllm:generation_tokens_total", **MODEL) == 14
    assert delta("vllm:prompt_tokens_total", **MODEL) == 2 * chat.usage.prompt_tokens + completion_usage.prompt_tokens
    assert delta("vllm:request_success_total", finished_reason="length", **MODEL) == 3
    assert delta("vllm:request_generation_tokens_sum", **MODEL) == 14
    assert delta("vllm:request_prompt_tokens_count", **MODEL) == 3
    assert delta("vllm:e2e_request_latency_seconds_count", **MODEL) == 3
    assert delta("vllm:time_to_first_token_seconds_count", **MODEL) == 3
    # The streamed completion's tokens came one response each: the frontend's and vLLM's inter-token histograms
    # hold the same observations.
    inter_token = delta("vllm:inter_token_latency_seconds_count", **MODEL)
    frontend_inter_token = sum(
        delta("frontend_inter_token_latency_seconds_count", endpoint=endpoint)
        for endpoint in ("/v1/chat/completions", "/v1/completions")
    )
    assert inter_token == frontend_inter_token >= 3
    assert delta("vllm:time_per_output_token_seconds_count", **MODEL) == inter_token


def llm_values(scraped: Series) -> dict[str, float]:
    """The llm model's metrics that ENGINE reads, each summed over its series (instances)."""
    return {
        llm_name: sum(v for (name, labels), v in scraped.items() if name == llm_name and ("model", "llm") in labels)
        for llm_name in ENGINE.values()
    }


def test_engine_state_is_the_llm_models(frontend_server: FrontendServer, triton_server: TritonServer) -> None:
    """Once the engine is idle and its counters published, the frontend's vllm:* engine metrics equal the llm
    model's own on Triton's metrics port (read before and after the frontend's, so that a publication in
    between is noticed and read again)."""
    client = openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)
    client.completions.create(model=MODEL_NAME, prompt="Prefix caching looks this prompt up.", max_tokens=2)
    # Each llm instance's series are its own (tritonserver would otherwise share one among them).
    running = [dict(labels) for name, labels in triton_series(triton_server) if name == "llm_num_requests_running"]
    assert [labels.get("model_instance") for labels in running] == ["llm_0_0 (CPU device 0)"]
    deadline = time.monotonic() + 15.0
    while True:
        first = llm_values(triton_series(triton_server))
        served = frontend_series(frontend_server)
        second = llm_values(triton_series(triton_server))
        if (first == second and second["llm_num_requests_running"] == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {name: value(served, name, **MODEL) for name in ENGINE} == {
        name: second[llm_name] for name, llm_name in ENGINE.items()
    }
    assert ("vllm:num_requests_running", frozenset(MODEL.items())) in served
    assert second["llm_num_requests_running"] == 0 and second["llm_prefix_cache_queries_total"] > 0
    assert value(served, "vllm:gpu_cache_usage_perc", **MODEL) == value(served, "vllm:kv_cache_usage_perc", **MODEL)
