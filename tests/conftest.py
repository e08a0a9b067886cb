"""Session fixtures shared by every test package: the default model and real servers.

Without CUDA the Triton kernels run under TRITON_INTERPRET, which Triton reads when `triton.language` is
first imported (its own jit functions, tl.sum among them, are built then) and when each kernel module is.
Anything may import triton at collection (transformers' MoE models, PEFT), so it is set here, before any
test module loads; on the CPU nothing else reads it (the engine's auto backend never touches Triton there).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tests.servers import ROOT, FrontendServer, ServerProcess, TritonServer, start_frontend, start_triton

DEFAULT_MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
FRONTEND_API_KEY = "test-key"
_running: dict[str, ServerProcess] = {}
SPOKEN_ENGLISH = "The quick brown fox jumps over the lazy dog. Paris is the capital of France."
SPOKEN_GERMAN = "Guten Morgen, wie geht es Ihnen heute? Das Wetter ist schön."


@pytest.fixture(scope="session", autouse=True)
def response_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Frontends started by the tests keep Responses API objects in a temporary database, not the user's."""
    url = f"sqlite:///{tmp_path_factory.mktemp('response-store') / 'responses.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITONLLM_RESPONSE_STORE", url)
        yield url


@pytest.fixture(scope="session", autouse=True)
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Frontends started by the tests keep Files and Batch API objects in a temporary directory, not the
    user's."""
    directory = tmp_path_factory.mktemp("files")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITONLLM_FILES_DIR", str(directory))
        yield directory


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


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Speech synthesized by espeak-ng: WAV files by language code ("en", "de"), and "en_flac"."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: run `make setup`")
    folder = tmp_path_factory.mktemp("speech")
    files = {}
    for voice, text in (("en", SPOKEN_ENGLISH), ("de", SPOKEN_GERMAN)):
        path = folder / f"{voice}.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
        files[voice] = path.read_bytes()
    flac = folder / "en.flac"
    subprocess.run(["sox", str(folder / "en.wav"), str(flac)], check=True)
    files["en_flac"] = flac.read_bytes()
    return files
