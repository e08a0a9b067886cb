"""Ends a Python-backend stub once its tritonserver is gone.

Triton 2.51 does not take its stubs down when the server itself dies (SIGKILL, OOM killer, a crash):
they are reparented to init and live on, the llm one still stepping its engine at full CPU. The watch is
a separate small process rather than a thread in the stub because a thread needs the GIL, which a stub
blocked sending to a dead server may never hand over. It follows the stub's parent pid, which changes
the moment the server exits (whether or not anyone reaps it), and the stub's start time, so a reused pid
is never mistaken for the stub.

Run as `python3 -m triton_adapters.server_watch SERVER_PID STUB_PID`; stubs call `exit_with_server()`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_SECONDS = 1.0


def process_identity(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name before ")" may hold spaces
    except OSError:
        return None
    if fields[0] == "Z":  # exited, waiting to be reaped
        return None
    return int(fields[1]), fields[19]


def watch(server_pid: int, stub_pid: int, poll_seconds: float = POLL_SECONDS) -> bool:
    """Wait while the stub lives under the server; kill it once it does not. True when it was killed."""
    identity = process_identity(stub_pid)
    if identity is None:
        return False
    born = identity[1]
    while True:
        identity = process_identity(stub_pid)
        if identity is None or identity[1] != born:
            return False  # the stub ended on its own (a normal unload)
        if identity[0] != server_pid:
            os.kill(stub_pid, signal.SIGKILL)
            return True
        time.sleep(poll_seconds)


def exit_with_server() -> None:
    """Start the watch of this stub process under its parent tritonserver."""
    subprocess.Popen(
        ["python3", "-m", "triton_adapters.server_watch", str(os.getppid()), str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        # Its own session: a signal meant for the stub's process group does not end the watch early.
        start_new_session=True,
    )


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]))
