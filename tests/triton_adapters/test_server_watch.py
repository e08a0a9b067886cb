"""The watch that ends a Python-backend stub once its tritonserver is gone, on real processes: a "server"
that starts a "stub" child, then dies (left unreaped, as a crashed server may be) or lets the stub end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from triton_adapters.server_watch import process_identity, watch

# Starts a child that sleeps (the stub), prints its pid, then waits for its own end.
SERVER = "import subprocess, sys, time; stub = subprocess.Popen(['sleep', sys.argv[1]]); print(stub.pid, flush=True); time.sleep(60)"


def start_server(stub_seconds: int) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(stub_seconds)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def test_the_stub_is_killed_once_its_server_dies_even_unreaped() -> None:
    server, stub = start_server(60)
    try:
        server.send_signal(signal.SIGKILL)
        time.sleep(0.2)  # not reaped: the server stays a zombie while the watch runs
        started = time.monotonic()
        assert watch(server.pid, stub, poll_seconds=0.05)
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 5
        while process_identity(stub) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_identity(stub) is None
    finally:
        server.kill()
        server.wait()


def test_a_stub_that_ends_on_its_own_is_left_alone() -> None:
    server, stub = start_server(1)
    try:
        assert not watch(server.pid, stub, poll_seconds=0.05)
        assert server.poll() is None, "the server keeps running"
    finally:
        server.kill()
        server.wait()


def test_identity_of_a_process_that_does_not_exist_is_none() -> None:
    assert process_identity(2**22 + 12345) is None  # above Linux's largest pid
