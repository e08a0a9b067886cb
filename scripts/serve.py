"""`make serve`: Triton with the model repository plus the OpenAI frontend, until Ctrl-C or SIGTERM.

Both children run in their own process groups, so stopping tears down tritonserver's Python
backend stubs too (no orphans).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

SNIPPET = """\
from openai import OpenAI
client = OpenAI(base_url="{base_url}", api_key="{api_key}")
reply = client.chat.completions.create(
    model="{model}", messages=[{{"role": "user", "content": "What is the capital of France?"}}]
)
print(reply.choices[0].message.content)"""


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_for(name: str, process: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with code {process.returncode}")
        if healthy(url):
            return
        time.sleep(0.5)
    raise SystemExit(f"{name} did not become healthy at {url} within {timeout:.0f}s")


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repository", default=str(ROOT / "model_repository"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--served-model-name", default="SmolLM2-135M-Instruct")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--api-key", default=os.environ.get("TRITONLLM_API_KEY"))
    args = parser.parse_args()

    processes: list[subprocess.Popen] = []

    def shutdown(signum: int, _frame: object) -> None:
        print(f"\n[serve] {signal.Signals(signum).name}: stopping", flush=True)
        stop(processes)
        raise SystemExit(0)

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)

    triton = subprocess.Popen(
        [str(VENV_BIN / "tritonserver"), f"--model-repository={args.model_repository}"],
        start_new_session=True,
    )
    processes.append(triton)
    print("[serve] starting tritonserver (HTTP 8000, gRPC 8001, metrics 8002)", flush=True)
    wait_for("tritonserver", triton, "http://127.0.0.1:8000/v2/health/ready", timeout=600)

    frontend_command = [
        str(VENV_BIN / "python"), "-m", "frontend",
        "--model", args.model,
        "--served-model-name", args.served_model_name,
        "--triton-url", "127.0.0.1:8001",
        "--host", args.host,
        "--port", str(args.port),
    ]  # fmt: skip
    if args.api_key:
        frontend_command += ["--api-key", args.api_key]
    frontend = subprocess.Popen(frontend_command, start_new_session=True)
    processes.append(frontend)
    base = f"http://{args.host}:{args.port}"
    wait_for("frontend", frontend, f"{base}/health", timeout=300)

    print(
        f"\n[serve] ready.\n"
        f"  OpenAI base URL:  {base}/v1\n"
        f"  Triton HTTP/gRPC: 127.0.0.1:8000 / 127.0.0.1:8001 (metrics http://127.0.0.1:8002/metrics)\n"
        f"  Stop with Ctrl-C.\n\n"
        + SNIPPET.format(base_url=f"{base}/v1", api_key=args.api_key or "none", model=args.served_model_name)
        + "\n",
        flush=True,
    )
    while all(process.poll() is None for process in processes):
        time.sleep(1)
    stop(processes)
    raise SystemExit("[serve] a server exited unexpectedly; both stopped")


if __name__ == "__main__":
    main()
