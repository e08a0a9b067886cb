"""Faults: the llm model's stub process dies mid-stream, tritonserver dies or restarts under a running frontend.
In-flight requests get a clear error, /health tells the truth, and service resumes without restarting
the frontend."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.reliability.conftest import PrivateStack
from tests.servers import stub_pids

pytestmark = pytest.mark.slow

MODEL_NAME = "SmolLM2-135M-Instruct"


def sdk(stack: PrivateStack) -> openai.OpenAI:
    # No retries: the test must see each failure as the client does on its first attempt.
    return openai.OpenAI(base_url=stack.frontend.base_url, api_key="unused", max_retries=0, timeout=120)


def stub_pid(triton_pid: int, model_file: str) -> int:
    """The stub running `model_file`."""
    for pid, cmdline in stub_pids(triton_pid).items():
        if model_file in cmdline:
            return pid
    raise LookupError(f"no stub for {model_file} under tritonserver {triton_pid}")


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def chat_works(stack: PrivateStack) -> bool:
    try:
        reply = sdk(stack).chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    except openai.APIError:
        return False
    return bool(reply.choices[0].message.content)


def long_stream(stack: PrivateStack):
    """A streamed chat of 1,000 tokens, still running when the test breaks something."""
    return sdk(stack).chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=1000,
        stream=True,
        extra_body={"ignore_eos": True},
    )


def health(stack: PrivateStack) -> int:
    return httpx.get(f"{stack.frontend.root_url}/health", timeout=10).status_code


def test_killed_llm_stub_fails_clearly_and_health_tells_the_truth(private_stack: PrivateStack) -> None:
    """Triton 2.51 does not restart a decoupled model's dead stub: requests must fail fast and clearly
    (503), /health must say so (an orchestrator then restarts the server), and a restart heals it."""
    assert private_stack.triton.process.process is not None
    stream = long_stream(private_stack)
    received, killed_at = "", 0.0
    with pytest.raises(openai.APIError) as failure:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not received:
                    pid = stub_pid(private_stack.triton.process.process.pid, "/llm/1/model.py")
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
                received += chunk.choices[0].delta.content
    # The frontend's stall probe ends the silent stream, long before any client timeout.
    assert time.monotonic() - killed_at < 30, "the stream hung after the engine died"
    assert received, "the stream produced nothing before the fault"
    assert "not healthy" in failure.value.message
    with pytest.raises(openai.InternalServerError) as refused:
        sdk(private_stack).chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert refused.value.status_code == 503 and "not healthy" in refused.value.message
    assert health(private_stack) == 503
    private_stack.restart_triton()
    assert wait_until(lambda: health(private_stack) == 200, timeout=60)
    assert chat_works(private_stack)


def test_tritonserver_restart_under_a_running_frontend(private_stack: PrivateStack) -> None:
    assert chat_works(private_stack)
    triton = private_stack.triton.process
    triton.stop()
    # No model process crashes on the way out (the llm stub did, destroying its metric families after the
    # stub's own state).
    assert "Segfault" not in triton.log_path.read_text(errors="replace"), triton.log_tail()
    with pytest.raises(openai.InternalServerError) as failure:
        sdk(private_stack).chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
    assert failure.value.status_code == 503
    assert health(private_stack) == 503
    private_stack.restart_triton()
    assert wait_until(lambda: health(private_stack) == 200, timeout=60)
    assert chat_works(private_stack)


def test_killed_tritonserver_takes_its_model_processes_down(private_stack: PrivateStack) -> None:
    """tritonserver killed outright (OOM killer, SIGKILL) while streams run: Triton itself leaves the
    Python stubs running, reparented to init, the llm one still stepping its engine. Ours end with it."""
    triton = private_stack.triton.process.process
    assert triton is not None
    stream = long_stream(private_stack)
    stubs: dict[int, str] = {}
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and not stubs:
                stubs = stub_pids(triton.pid)
                os.kill(triton.pid, signal.SIGKILL)
    triton.wait(timeout=10)
    command_lines = " ".join(stubs.values())
    assert all(model in command_lines for model in ("/llm/1/", "/preprocess/1/", "/postprocess/1/"))
    try:
        assert wait_until(lambda: not any(alive(pid) for pid in stubs), timeout=20), [
            cmdline for pid, cmdline in stubs.items() if alive(pid)
        ]
    finally:
        for pid in filter(alive, stubs):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a failure must not leave an engine burning the suite's CPU
    private_stack.restart_triton()
    assert wait_until(lambda: health(private_stack) == 200, timeout=60)
    assert chat_works(private_stack)
