"""The Files and Batch APIs in-process, through the official OpenAI SDK, over a Triton that is not there: files
up and down, every refusal, batch validation, a batch whose every line meets the unreachable engine (each
line's answer is what a direct request gets: 503), tenants kept apart, and batches a stopped server left
unfinished taken up by the next start. (Batches answered by the real engine: tests/integration.)"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from frontend.app import build_app
from frontend.file_store import FileStore, StoredBatch
from frontend.middleware import endpoint_label
from frontend.protocol.batches import Batch
from frontend.serving.batches import COMPLETION_WINDOW_S
from frontend.templating import ChatTemplater
from tests.frontend.conftest import API_KEY, MODEL_NAME, offline_config, offline_serving_context

CHAT = "/v1/chat/completions"


def sdk(http: TestClient, api_key: str = API_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=api_key, http_client=http, max_retries=0)


@pytest.fixture(scope="module")
def client(offline_client: TestClient) -> openai.OpenAI:
    return sdk(offline_client)


def chat_line(custom_id: str, **body: Any) -> dict[str, Any]:
    request = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **body}
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": request}


def jsonl(lines: list[Any]) -> bytes:
    return "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines).encode()


def wait_for_end(client: openai.OpenAI, batch_id: str, timeout: float = 20.0) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled") or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def read_lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def run_batch(client: openai.OpenAI, lines: list[Any], endpoint: str = CHAT) -> openai.types.Batch:
    upload = client.files.create(file=("input.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")  # type: ignore[arg-type]
    assert batch.status == "validating" and batch.input_file_id == upload.id
    return wait_for_end(client, batch.id)


def test_files_up_list_read_and_delete(client: openai.OpenAI) -> None:
    # Larger than the offline app's 4096-byte request limit: uploads have their own.
    data = b'{"n": 1}\n' * 1000
    first = client.files.create(file=("a.jsonl", data), purpose="batch")
    second = client.files.create(
        file=("b.txt", b"notes"), purpose="user_data", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert (first.bytes, first.filename, first.purpose, first.status) == (
        len(data),
        "a.jsonl",
        "batch",
        "processed",
    )
    # Batch inputs expire after 30 days unless told otherwise, as OpenAI's do; others when told.
    assert first.expires_at == first.created_at + 30 * 24 * 3600
    assert second.expires_at == second.created_at + 3600
    assert client.files.retrieve(first.id) == first
    assert client.files.content(first.id).read() == data

    listed = [file.id for file in client.files.list()]
    assert listed.index(second.id) < listed.index(first.id)  # newest first
    ascending = [file.id for file in client.files.list(order="asc")]
    assert ascending.index(first.id) < ascending.index(second.id)
    assert second.id not in [file.id for file in client.files.list(purpose="batch")]
    page = client.files.list(order="asc", after=first.id, limit=1)
    assert [file.id for file in page.data] == [second.id]

    deleted = client.files.delete(first.id)
    assert deleted.deleted and deleted.id == first.id
    with pytest.raises(openai.NotFoundError) as missing:
        client.files.retrieve(first.id)
    assert missing.value.body["code"] == "file_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.files.content(first.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(first.id)


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"purpose": "batch"}, "file"),
        ({"file": b"x"}, "purpose"),
        ({"file": b"x", "purpose": "fine-tune-results"}, "purpose"),
        ({"file": b"", "purpose": "batch"}, "file"),
        (
            {
                "file": b"x",
                "purpose": "batch",
                "expires_after[anchor]": "created_at",
                "expires_after[seconds]": "60",
            },
            "expires_after.seconds",
        ),
        (
            {
                "file": b"x",
                "purpose": "batch",
                "expires_after[anchor]": "last_active_at",
                "expires_after[seconds]": "3600",
            },
            "expires_after.anchor",
        ),
    ],
)
def test_upload_refusals_name_the_field(offline_client: TestClient, form: dict[str, Any], param: str) -> None:
    files = {"file": ("f.jsonl", form.pop("file"))} if "file" in form else {"other": ("f", b"x")}
    reply = offline_client.post("/v1/files", data=form, files=files)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["param"] == param


def test_an_upload_over_the_limit_is_413(model_path: Path, templater: ChatTemplater) -> None:
    context = offline_serving_context(offline_config(model_path, max_upload_bytes=10_000), templater)
    with TestClient(build_app(context), headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        assert sdk(http).files.create(file=("ok", b"x" * 9_000), purpose="batch").bytes == 9_000
        with pytest.raises(openai.APIStatusError) as refused:
            sdk(http).files.create(file=("big", b"x" * 10_001), purpose="batch")
        assert refused.value.status_code == 413


def test_unknown_and_malformed_ids_are_404(offline_client: TestClient) -> None:
    for path in (
        "/v1/files/file-0000",
        "/v1/files/..%2Fbatches%2Fx",
        "/v1/files/file-../content",
        "/v1/batches/batch_nope",
    ):
        assert offline_client.get(path).status_code == 404, path
    assert offline_client.post("/v1/batches/batch_0/cancel").status_code == 404


def test_batch_create_refusals(client: openai.OpenAI) -> None:
    notes = client.files.create(file=("notes.txt", b"hello"), purpose="user_data")
    batch_input = client.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
    with pytest.raises(openai.BadRequestError) as wrong_endpoint:
        client.batches.create(
            input_file_id=batch_input.id, endpoint="/v1/moderations", completion_window="24h"
        )
    assert wrong_endpoint.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as wrong_purpose:
        client.batches.create(input_file_id=notes.id, endpoint=CHAT, completion_window="24h")
    assert wrong_purpose.value.body["param"] == "input_file_id"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-0123abcd", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError) as wrong_window:
        client.batches.create(input_file_id=batch_input.id, endpoint=CHAT, completion_window="1h")  # type: ignore[arg-type]
    assert wrong_window.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as long_metadata:
        client.batches.create(
            input_file_id=batch_input.id, endpoint=CHAT, completion_window="24h", metadata={"k": "v" * 513}
        )
    assert long_metadata.value.body["param"] == "metadata"  # type: ignore[index]


@pytest.mark.parametrize(
    ("lines", "errors"),
    [
        ([chat_line("a"), "{not json", chat_line("c")], [("invalid_json_line", 2, None)]),
        ([chat_line("a"), chat_line("a")], [("duplicate_custom_id", 2, "custom_id")]),
        ([{**chat_line("a"), "url": "/v1/completions"}], [("mismatched_endpoint", 1, "url")]),
        (
            [{**chat_line("a"), "method": "GET"}, {"custom_id": "b", "method": "POST", "url": CHAT}],
            [("invalid_request", 1, "method"), ("invalid_request", 2, "body")],
        ),
        (["", "  "], [("empty_file", None, None)]),
    ],
)
def test_a_malformed_input_file_fails_the_batch_naming_its_lines(
    client: openai.OpenAI, lines: list[Any], errors: list[tuple[str, int | None, str | None]]
) -> None:
    batch = run_batch(client, lines)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(error.code, error.line, error.param) for error in batch.errors.data] == errors
    assert batch.output_file_id is None and batch.error_file_id is None


def test_each_line_gets_what_a_direct_request_gets(client: openai.OpenAI, offline_client: TestClient) -> None:
    lines = [
        chat_line("ok"),
        chat_line("no-messages", messages=None),
        chat_line("streamed", stream=True),
        chat_line("other", model="no-such-model"),
    ]
    batch = run_batch(client, lines)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (
        4,
        0,
        4,
    )
    assert batch.output_file_id is None and batch.model == MODEL_NAME
    answers = {line["custom_id"]: line for line in read_lines(client, batch.error_file_id)}
    # In the order they were answered (as OpenAI's): custom_id names each.
    assert sorted(answers) == sorted(["ok", "no-messages", "streamed", "other"])
    direct = offline_client.post(CHAT, json=lines[0]["body"])
    assert answers["ok"]["response"]["status_code"] == direct.status_code == 503
    assert answers["ok"]["response"]["body"]["error"]["type"] == direct.json()["error"]["type"]
    assert answers["no-messages"]["response"]["status_code"] == 400
    assert answers["streamed"]["response"]["body"]["error"]["param"] == "stream"
    assert answers["other"]["response"]["status_code"] == 404
    for answer in answers.values():
        assert answer["id"].startswith("batch_req_") and answer["error"] is None
        assert answer["response"]["request_id"] in answer["id"]

    listed = [listed.id for listed in client.batches.list(limit=100)]
    assert listed[0] == batch.id  # newest first
    with pytest.raises(openai.APIStatusError) as ended:
        client.batches.cancel(batch.id)
    assert ended.value.status_code == 409


def test_lines_end_at_newlines_only(client: openai.OpenAI) -> None:
    # json.dumps(ensure_ascii=False) leaves U+2028 and U+0085 raw inside strings; they end no line.
    line = json.dumps(
        chat_line("separators", messages=[{"role": "user", "content": "a\u2028b\u0085c"}]), ensure_ascii=False
    )
    batch = run_batch(client, [line, chat_line("plain")])
    assert (
        batch.status == "completed" and batch.request_counts is not None and batch.request_counts.total == 2
    )


def test_tenants_see_only_their_files_and_batches(model_path: Path, templater: ChatTemplater) -> None:
    config = offline_config(model_path, api_keys=("key-a", "key-b"), isolate_api_keys=True)
    with TestClient(build_app(offline_serving_context(config, templater))) as http:
        owner, other = sdk(http, "key-a"), sdk(http, "key-b")
        upload = owner.files.create(file=("in.jsonl", jsonl([chat_line("a")])), purpose="batch")
        batch = owner.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h")
        wait_for_end(owner, batch.id)
        assert [file.id for file in other.files.list()] == []
        assert [listed.id for listed in other.batches.list()] == []
        for call in (
            lambda: other.files.retrieve(upload.id),
            lambda: other.files.content(upload.id),
            lambda: other.files.delete(upload.id),
            lambda: other.batches.retrieve(batch.id),
            lambda: other.batches.cancel(batch.id),
            lambda: other.batches.create(input_file_id=upload.id, endpoint=CHAT, completion_window="24h"),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        # The batch's own files are its owner's.
        error_file = owner.batches.retrieve(batch.id).error_file_id
        assert error_file is not None and error_file in [
            file.id for file in owner.files.list(purpose="batch_output")
        ]


@pytest.fixture
def stopped_server_dir(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A files directory as a server stopped mid-work leaves it: batches in every unfinished state."""
    store = FileStore(tmp_path)
    upload = store.create_file("in.jsonl", "batch", jsonl([chat_line("a"), chat_line("b")]), None, None)
    now = int(time.time())
    ids = []
    for status in ("validating", "in_progress", "finalizing", "cancelling"):
        batch = Batch(
            id=f"batch_{status.replace('_', '')}0",
            endpoint=CHAT,
            input_file_id=upload.id,
            completion_window="24h",
            status=status,  # type: ignore[arg-type]
            created_at=now,
            expires_at=now + COMPLETION_WINDOW_S,
        )
        # Counts of the run that stopped: the next one starts from nothing.
        batch.request_counts.completed = 1
        store.save_batch(StoredBatch(batch, None, None))
        ids.append(batch.id)
    yield tmp_path, ids


def test_a_restart_takes_up_unfinished_batches(
    model_path: Path, templater: ChatTemplater, stopped_server_dir: tuple[Path, list[str]]
) -> None:
    directory, ids = stopped_server_dir
    config = offline_config(model_path, files_dir=directory)
    with TestClient(build_app(offline_serving_context(config, templater))) as http:
        client = sdk(http)
        ended = {batch_id: wait_for_end(client, batch_id) for batch_id in ids}
    for batch_id in ids[:3]:
        batch = ended[batch_id]
        assert batch.status == "completed", batch
        assert batch.request_counts is not None and (
            batch.request_counts.failed,
            batch.request_counts.completed,
        ) == (2, 0)
        assert len(read_lines_from(directory, batch.error_file_id)) == 2
    assert ended[ids[3]].status == "cancelled"


def read_lines_from(directory: Path, file_id: str | None) -> list[str]:
    assert file_id is not None
    return FileStore(directory).read_file(file_id).decode().splitlines()


def test_an_expired_file_is_gone(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    lasting = store.create_file("keep", "user_data", b"x", None, None)
    expired = store.create_file("gone", "user_data", b"x", None, 0)
    assert store.get_file(expired.id) is None
    assert [stored.file.id for stored in store.list_files()] == [lasting.id]
    assert not (tmp_path / "files" / expired.id).exists()


def test_metric_labels_of_file_and_batch_paths() -> None:
    assert endpoint_label("/v1/files") == "/v1/files"
    assert endpoint_label("/v1/files/file-1") == "/v1/files/{file_id}"
    assert endpoint_label("/v1/files/file-1/content") == "/v1/files/{file_id}/content"
    assert endpoint_label("/v1/batches/batch_1/cancel") == "/v1/batches/{batch_id}/cancel"
    assert endpoint_label("/v1/batches/batch_1/other") == "other"
    assert endpoint_label("/v1/responses/resp_1/input_items") == "/v1/responses/{response_id}/input_items"
