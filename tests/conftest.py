"""Session fixtures shared by every test package: the default model and real servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ROOT, FrontendServer, ServerProcess, TritonServer, start_frontend, start_triton

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
FRONTEND_API_KEY = "test-key"
_running: dict[str, ServerProcess] = {}


@pytest.fixture(scope="session", autouse=True)
def response_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Frontends started by the tests keep Responses API objects in a temporary database, not the user's."""
    url = f"sqlite:///{tmp_path_factory.mktemp('response-store') / 'responses.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITONLLM_RESPONSE_STORE", url)
        yield url


@pytest.fixture(scope="session")
def model_path() -> Path:
    if not (DEFAULT_MODEL / "model.safetensors").exists():
        pytest.fail(f"{DEFAULT_MODEL} is missing: run `make setup` first")
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def triton_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    server = start_triton(ROOT / "model_repository", tmp_path_factory.mktemp("tritonserver"))
    _running["tritonserver"] = server.process
    yield server
    server.process.stop()
    _running.pop("tritonserver", None)


@pytest.fixture(scope="session")
def frontend_server(
    model_path: Path, triton_server: TritonServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FrontendServer]:
    server = start_frontend(model_path, triton_server, tmp_path_factory.mktemp("frontend"), FRONTEND_API_KEY)
    _running["frontend"] = server.process
    yield server
    server.process.stop()
    _running.pop("frontend", None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the tail of every running server's log to a failing test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, process in _running.items():
            report.sections.append((f"{name} log (tail)", process.log_tail()))
