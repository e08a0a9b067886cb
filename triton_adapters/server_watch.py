"""Ends a Python-backend stub once its tritonserver is gone.

Triton 2.51 does not take its stubs down when the server itself dies (SIGKILL, OOM killer, a crash):
they are reparented to init and live on, the llm one still stepping its engine at full CPU. The watch
is a separate `sh` loop rather than a thread in the stub because a thread needs the GIL, which a stub
blocked sending to a dead server may never hand over.
"""

from __future__ import annotations

import os
import subprocess

POLL_SECONDS = 1

# $1 is the server, $2 the stub. The loop also ends when the stub exits on its own (a normal unload).
_WATCH_SCRIPT = (
    'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep {poll}; done; kill -9 "$2" 2>/dev/null'
)


def exit_with_server() -> None:
    """Kill this stub process as soon as its parent tritonserver no longer exists."""
    server_pid, stub_pid = os.getppid(), os.getpid()
    subprocess.Popen(
        ["sh", "-c", _WATCH_SCRIPT.format(poll=POLL_SECONDS), "server-watch", str(server_pid), str(stub_pid)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        # Its own session: a signal meant for the stub's process group does not end the watch early.
        start_new_session=True,
    )
