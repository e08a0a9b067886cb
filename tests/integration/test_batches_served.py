"""The Batch API through the whole stack (tritonserver, the frontend, the official OpenAI SDK): a batch's
answers are the direct requests' answers, token for token and vector for vector; a cancelled batch lets go of
the engine and accounts for every line; a frontend stopped mid-batch finishes it after a restart."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from tests.frontend.conftest import MODEL_NAME
from tests.frontend.test_openai_sdk import running_requests
from tests.servers import FrontendServer, TritonServer, start_frontend

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Name a colour.", "Count to three."]


@pytest.fixture(scope="module")
def client(frontend_server: FrontendServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=frontend_server.base_url, api_key=frontend_server.api_key, max_retries=0)


def chat_body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        **fields,
    }


def submit(client: openai.OpenAI, endpoint: str, bodies: dict[str, dict[str, Any]]) -> str:
    lines = [
        {"custom_id": name, "method": "POST", "url": endpoint, "body": body} for name, body in bodies.items()
    ]
    data = "\n".join(json.dumps(line) for line in lines).encode()
    upload = client.files.create(file=("requests.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h").id  # type: ignore[arg-type]


def wait_until(
    client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float
) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    batch = client.batches.retrieve(batch_id)
    while batch.status not in statuses and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = client.batches.retrieve(batch_id)
    assert batch.status in statuses, batch
    return batch


def answers(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    if file_id is None:
        return {}
    lines = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    return {line["custom_id"]: line for line in lines}


def test_a_chat_batch_answers_as_direct_requests_do(client: openai.OpenAI) -> None:
    bodies = {f"q{i}": chat_body(prompt, max_tokens=8) for i, prompt in enumerate(PROMPTS)}
    bodies["unknown-model"] = {**chat_body("hi", max_tokens=8), "model": "no-such-model"}
    batch = wait_until(client, submit(client, "/v1/chat/completions", bodies), ("completed",), 120)

    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        4,
        3,
        1,
    )
    succeeded = answers(client, batch.output_file_id)
    assert sorted(succeeded) == ["q0", "q1", "q2"]
    usage = {"input": 0, "output": 0}
    for name, prompt in zip(sorted(succeeded), PROMPTS, strict=True):
        direct = client.chat.completions.create(**chat_body(prompt, max_tokens=8))
        response = succeeded[name]["response"]
        assert response["status_code"] == 200
        assert response["body"]["choices"][0]["message"]["content"] == direct.choices[0].message.content
        assert response["body"]["usage"]["completion_tokens"] == 8
        usage["input"] += response["body"]["usage"]["prompt_tokens"]
        usage["output"] += response["body"]["usage"]["completion_tokens"]
    assert batch.usage is not None
    assert (batch.usage.input_tokens, batch.usage.output_tokens) == (usage["input"], usage["output"])
    assert batch.usage.total_tokens == usage["input"] + usage["output"]

    failed = answers(client, batch.error_file_id)
    assert failed["unknown-model"]["response"]["status_code"] == 404
    assert failed["unknown-model"]["response"]["body"]["error"]["code"] == "model_not_found"


def test_an_embeddings_batch_gives_the_direct_vectors(client: openai.OpenAI) -> None:
    bodies = {f"e{i}": {"model": MODEL_NAME, "input": prompt} for i, prompt in enumerate(PROMPTS[:2])}
    batch = wait_until(client, submit(client, "/v1/embeddings", bodies), ("completed",), 60)
    for name, body in bodies.items():
        vector = answers(client, batch.output_file_id)[name]["response"]["body"]["data"][0]["embedding"]
        direct = client.embeddings.create(model=MODEL_NAME, input=body["input"]).data[0].embedding
        np.testing.assert_allclose(vector, direct, atol=1e-6)


def test_a_cancelled_batch_lets_go_of_the_engine(client: openai.OpenAI, triton_server: TritonServer) -> None:
    bodies = {f"long{i}": chat_body(f"Story {i}:", max_tokens=400, ignore_eos=True) for i in range(12)}
    batch_id = submit(client, "/v1/chat/completions", bodies)
    deadline = time.monotonic() + 30
    while running_requests(triton_server) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_requests(triton_server) >= 1
    assert client.batches.cancel(batch_id).status == "cancelling"
    batch = wait_until(client, batch_id, ("cancelled",), 30)
    assert batch.cancelling_at is not None and batch.cancelled_at is not None

    unanswered = answers(client, batch.error_file_id)
    assert set(answers(client, batch.output_file_id)) | set(unanswered) == set(bodies)
    assert unanswered and all(line["error"]["code"] == "batch_cancelled" for line in unanswered.values())
    deadline = time.monotonic() + 10
    while running_requests(triton_server) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running_requests(triton_server) == 0


def test_a_restarted_frontend_finishes_the_batch(
    model_path: Path, triton_server: TritonServer, tmp_path: Path
) -> None:
    files = ("--files-dir", str(tmp_path / "files"))
    first = start_frontend(model_path, triton_server, tmp_path, None, extra_args=files, log_name="first.log")
    try:
        client = openai.OpenAI(base_url=first.base_url, api_key="unused", max_retries=0)
        bodies = {f"r{i}": chat_body(f"Line {i}:", max_tokens=48, ignore_eos=True) for i in range(6)}
        batch_id = submit(client, "/v1/chat/completions", bodies)
        wait_until(client, batch_id, ("in_progress",), 30)
    finally:
        first.process.stop()
    # Stopped mid-batch: the record says so, and no results were written.
    record = json.loads((tmp_path / "files" / "batches" / f"{batch_id}.json").read_text())
    assert record["object"]["status"] == "in_progress" and record["object"]["output_file_id"] is None
    second = start_frontend(
        model_path, triton_server, tmp_path, None, extra_args=files, log_name="second.log"
    )
    try:
        client = openai.OpenAI(base_url=second.base_url, api_key="unused", max_retries=0)
        batch = wait_until(client, batch_id, ("completed",), 120)
        assert batch.request_counts is not None and batch.request_counts.completed == 6
        finished = answers(client, batch.output_file_id)
        assert set(finished) == set(bodies)
        assert all(line["response"]["body"]["usage"]["completion_tokens"] == 48 for line in finished.values())
    finally:
        second.process.stop()
