"""Real server processes for the tests: tritonserver and the OpenAI frontend on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> tuple[int, ...]:
    """`count` distinct ports free now: all bound at once while chosen, since the kernel may hand a port it
    just handed out (and saw closed) to the next bind (tritonserver refused to start once when its http and
    metrics ports came out equal)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return tuple(int(sock.getsockname()[1]) for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (urllib.error.URLError, OSError):
        return None


def stub_pids(triton_pid: int) -> dict[int, str]:
    """The Python backend stubs among tritonserver's children: pid -> command line."""
    stubs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent = next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent) == triton_pid and "triton_python_backend_stub" in cmdline:
            stubs[int(entry.name)] = cmdline
    return stubs


@dataclass
class ServerProcess:
    """A child process in its own process group, with its output in a log file."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log.close()

    def wait_healthy(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if http_status(url) == 200:
                return
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not healthy at {url} after {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGTERM to the server alone, as docker stop and Kubernetes send it: it takes down its own children.
        # Triton 2.51 now and then never unloads `llm` and would wait out its 30 s exit timeout (seen more
        # often with the signal sent to its whole group): past `timeout` the group is killed.
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever it left behind, or itself past the timeout
        self.process.wait()

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@dataclass
class TritonServer:
    process: ServerProcess
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"


def start_triton(
    repository: Path, log_dir: Path, timeout: float = 240.0, ports: tuple[int, int, int] | None = None
) -> TritonServer:
    """Start tritonserver on `ports` (http, grpc, metrics) or free ones, and wait until it is ready."""
    http_port, grpc_port, metrics_port = ports or free_ports(3)
    process = ServerProcess(
        name="tritonserver",
        command=[
            str(VENV_BIN / "tritonserver"),
            f"--model-repository={repository}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            "--http-address=127.0.0.1",
            "--grpc-address=127.0.0.1",
            "--metrics-address=127.0.0.1",
            "--log-verbose=0",
        ],
        log_path=log_dir / "tritonserver.log",
    )
    process.start()
    try:
        process.wait_healthy(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout)
    except Exception:
        process.stop()
        raise
    return TritonServer(process, http_port, grpc_port, metrics_port)


@dataclass
class FrontendServer:
    process: ServerProcess
    port: int
    api_key: str | None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post_and_leave(self, path: str, body: dict[str, Any], wait_s: float) -> bool:
        """POST `body` to `path` (under /v1) as a client that gives up after `wait_s` seconds without an
        answer and closes the connection; whether it did give up (False: the answer came first)."""
        try:
            httpx.post(
                f"{self.base_url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=httpx.Timeout(10.0, read=wait_s),
            )
        except httpx.ReadTimeout:
            return True
        return False

    def leave_and_expect_release(
        self, path: str, body: dict[str, Any], held: Callable[[], float], what: str, release_s: float
    ) -> None:
        """POST `body` as a client that gives up after 4 s (post_and_leave) while the engine works on it,
        then assert the engine lets go of it: `held()` (a Triton gauge of the engine's requests, refreshed
        every 0.5 s) shows it within those 4 s and is back to 0 within `release_s` after the client left.
        `what` names the request in the failure message."""
        outcome: list[bool] = []
        caller = threading.Thread(target=lambda: outcome.append(self.post_and_leave(path, body, 4.0)))
        caller.start()
        deadline = time.monotonic() + 4.0
        while held() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held() >= 1
        caller.join(timeout=20)
        assert outcome == [True], f"{what} should still be running when the client gives up"
        deadline = time.monotonic() + release_s
        while held() > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert held() == 0


def start_frontend(
    model_path: Path,
    triton: TritonServer,
    log_dir: Path,
    api_key: str | None,
    timeout: float = 120.0,
    extra_args: tuple[str, ...] = (),
    log_name: str = "frontend.log",
) -> FrontendServer:
    """Start the OpenAI frontend on a free port in front of `triton`, with `extra_args` for its CLI."""
    port = free_port()
    command = [
        str(VENV_BIN / "python"),
        "-m",
        "frontend",
        "--model",
        str(model_path),
        "--served-model-name",
        "SmolLM2-135M-Instruct",
        "--triton-url",
        triton.grpc_url,
        "--triton-metrics-url",
        triton.metrics_url,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra_args,
    ]
    if api_key:
        command += ["--api-key", api_key]
    process = ServerProcess(name="frontend", command=command, log_path=log_dir / log_name)
    process.start()
    try:
        process.wait_healthy(f"http://127.0.0.1:{port}/health", timeout)
    except Exception:
        process.stop()
        raise
    return FrontendServer(process, port, api_key)


@contextmanager
def profile_stack(
    model_path: Path, overrides: Mapping[str, object], folder: Path, name: str
) -> Iterator[tuple[TritonServer, FrontendServer]]:
    """tritonserver on the cpu-default profile with `overrides` (rendered into `folder` as `name`) and a
    frontend without an API key in front of it; both stopped on leaving."""
    # Imported here: the project's render module is no dependency of the servers' other users.
    from ensemble_configs.render import render_variant

    repository = render_variant(ROOT / "ensemble_configs" / "profiles" / "cpu-default.yaml", overrides, folder, name)
    triton = start_triton(repository, folder)
    try:
        frontend = start_frontend(model_path, triton, folder, api_key=None)
        try:
            yield triton, frontend
        finally:
            frontend.process.stop()
    finally:
        triton.process.stop()
