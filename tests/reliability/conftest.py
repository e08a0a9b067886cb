"""A private, deliberately small serving stack (its own tritonserver and frontend) that reliability
tests may overload, break and restart without disturbing the shared session servers."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ensemble_configs.render import render_variant
from tests.integration.triton_requests import scrape_metric
from tests.servers import ROOT, FrontendServer, TritonServer, free_ports, start_frontend, start_triton

# Two running sequences and two waiting ones: the fifth concurrent request is refused.
SMALL_PROFILE = {
    "max_num_seqs": 2,
    "max_waiting_requests": 2,
    "kv_cache_memory": 64 * 1024 * 1024,
    "max_model_len": 2048,
    "preprocess_instances": 1,
}


@dataclass
class PrivateStack:
    """Triton on fixed ports (so it can be restarted where the frontend expects it) and a frontend."""

    repository: Path
    log_dir: Path
    ports: tuple[int, int, int]
    triton: TritonServer
    frontend: FrontendServer

    def restart_triton(self) -> None:
        self.triton.process.stop()
        self.triton = start_triton(self.repository, self.log_dir, ports=self.ports)


@pytest.fixture(scope="module")
def private_stack(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    folder = tmp_path_factory.mktemp("private-stack")
    repository = render_variant(ROOT / "ensemble_configs" / "profiles" / "cpu-default.yaml", SMALL_PROFILE, folder, "small")
    ports = free_ports(3)
    triton = start_triton(repository, folder, ports=ports)
    try:
        frontend = start_frontend(model_path, triton, folder, api_key=None)
    except Exception:
        triton.process.stop()
        raise
    stack = PrivateStack(repository, folder, ports, triton, frontend)
    yield stack
    stack.frontend.process.stop()
    stack.triton.process.stop()


def engine_metric(triton: TritonServer, name: str) -> float:
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        return scrape_metric(response.read().decode(), name)
