"""Speculative decoding configured as README.md says (a profile's `speculative_config`, rendered into the
llm model's parameters), served by a tritonserver of its own: the same text as the shared server's, and
the speculation counters on Triton's metrics."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ensemble_configs.render import render_variant
from tests.integration.triton_requests import generate, scrape_metric
from tests.servers import ROOT, TritonServer, start_triton

pytestmark = pytest.mark.slow

SPECULATIVE_CONFIG = '{"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4, "prompt_lookup_min": 2}'
REQUEST = {
    "text_input": "1, 2, 3, 4, 5, 6, 7, 8,",
    "max_tokens": 40,
    "ignore_eos": True,
    "stream": True,
    "temperature": 0.0,
}


@pytest.fixture(scope="module")
def speculating_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    folder = tmp_path_factory.mktemp("speculative")
    overrides = {"kv_cache_memory": 64 << 20, "speculative_config": SPECULATIVE_CONFIG}
    repository = render_variant(ROOT / "ensemble_configs" / "profiles" / "cpu-default.yaml", overrides, folder, "speculative")
    server = start_triton(repository, folder)
    yield server
    server.process.stop()


def metric(server: TritonServer, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=5) as response:
        return scrape_metric(response.read().decode(), name)


def test_a_speculating_server_answers_as_the_plain_one_and_counts_its_drafts(
    speculating_server: TritonServer, triton_server: TritonServer
) -> None:
    speculated = generate(speculating_server.grpc_url, REQUEST)
    plain = generate(triton_server.grpc_url, REQUEST)
    assert speculated.error is None and plain.error is None
    assert (speculated.text, speculated.token_ids) == (plain.text, plain.token_ids)
    assert speculated.num_output_tokens == 40
    # Several tokens arrive in one response when drafts were accepted.
    assert len(speculated.texts) < len(plain.texts)
    deadline = time.monotonic() + 10.0  # the counters follow the engine's totals, published twice a second
    while metric(speculating_server, "llm_spec_decode_num_accepted_tokens_total") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    accepted = metric(speculating_server, "llm_spec_decode_num_accepted_tokens_total")
    assert 0 < accepted <= metric(speculating_server, "llm_spec_decode_num_draft_tokens_total")
    assert metric(triton_server, "llm_spec_decode_num_draft_tokens_total") == 0
