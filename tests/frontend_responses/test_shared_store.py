"""Two frontend replicas behind one PostgreSQL response store: what one creates, the other retrieves,
continues, lists and deletes; a background response one runs, the other streams live, cancels or
deletes (the OpenAI SDK against real frontends and a real tritonserver)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from frontend.serving.responses import CANCEL_WAIT_SECONDS, STALE_SECONDS
from tests.frontend.conftest import MODEL_NAME
from tests.frontend_responses.test_responses_sdk import QUESTION, engine_goes_idle, start_long_background
from tests.postgres import PostgresServer
from tests.servers import TritonServer, start_frontend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_url(postgres: PostgresServer) -> str:
    return postgres.new_database("replicas")


@pytest.fixture(scope="module")
def replicas(
    model_path: Path, triton_server: TritonServer, store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[openai.OpenAI, openai.OpenAI]]:
    """Two frontends on one PostgreSQL database, and an SDK client on each."""
    logs = tmp_path_factory.mktemp("replicas")
    servers = []
    try:
        for index in range(2):
            servers.append(
                start_frontend(
                    model_path, triton_server, logs, api_key=None, extra_args=("--response-store", store_url),
                    log_name=f"replica-{index}.log",
                )
            )  # fmt: skip
        first, second = (
            openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0) for server in servers
        )
        yield first, second
    finally:
        for server in servers:
            server.process.stop()


def test_replicas_share_their_responses(replicas: tuple[openai.OpenAI, openai.OpenAI]) -> None:
    first, second = replicas
    created = first.responses.create(
        model=MODEL_NAME, input="Name a color.", instructions="Answer in one word.", max_output_tokens=4
    )
    assert second.responses.retrieve(created.id).output_text == created.output_text
    assert [item.id for item in second.responses.input_items.list(created.id)] == [
        item.id for item in first.responses.input_items.list(created.id)
    ]
    # The other replica rebuilds the conversation from the shared store.
    continued = second.responses.create(
        model=MODEL_NAME, input="And another?", previous_response_id=created.id, max_output_tokens=4
    )
    assert continued.previous_response_id == created.id
    alone = second.responses.create(model=MODEL_NAME, input="And another?", max_output_tokens=1)
    assert continued.usage is not None and alone.usage is not None
    assert continued.usage.input_tokens > alone.usage.input_tokens + 5  # the first turn came along
    assert first.responses.retrieve(continued.id).output_text == continued.output_text
    second.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(created.id)


def test_a_background_response_is_followed_and_cancelled_from_the_other_replica(
    replicas: tuple[openai.OpenAI, openai.OpenAI], triton_server: TritonServer
) -> None:
    first, second = replicas
    short = first.responses.create(model=MODEL_NAME, input=QUESTION, max_output_tokens=6, background=True)
    # Streamed live from the replica that is not running it, from the store.
    followed = list(second.responses.retrieve(short.id, stream=True, starting_after=0))
    assert [event.sequence_number for event in followed] == list(range(1, len(followed) + 1))
    assert followed[-1].type in ("response.completed", "response.incomplete")
    text = "".join(event.delta for event in followed if event.type == "response.output_text.delta")
    assert text == first.responses.retrieve(short.id).output_text

    long_id, stream = start_long_background(first, second)
    cancelled = second.responses.cancel(long_id)
    stream.close()
    assert cancelled.status == "cancelled"
    assert first.responses.retrieve(long_id).status == "cancelled"
    # The replica running it stopped it: the engine has nothing left to generate.
    assert engine_goes_idle(triton_server)

    # Deleted on the other replica: the one running it stops generating it too.
    doomed_id, stream = start_long_background(first, second)
    stream.close()
    second.responses.delete(doomed_id)
    assert engine_goes_idle(triton_server)
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(doomed_id)


def test_responses_of_a_replica_that_died_are_ended_by_the_others(
    replicas: tuple[openai.OpenAI, openai.OpenAI],
    store_url: str,
    model_path: Path,
    triton_server: TritonServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A replica killed mid-run (SIGKILL: it stores nothing more) leaves its background responses in progress
    in the store. The others end them once nobody keeps them alive: a cancel within seconds, anything else as
    failed after STALE_SECONDS, streaming the events that end it to a follower."""
    first, second = replicas
    doomed = start_frontend(
        model_path, triton_server, tmp_path_factory.mktemp("doomed"), api_key=None,
        extra_args=("--response-store", store_url), log_name="doomed.log",
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=doomed.base_url, api_key="none", max_retries=0)
        failing_id, stream = start_long_background(client, first)
        stream.close()
        cancelled_id, stream = start_long_background(client, first)
        stream.close()
    finally:
        assert doomed.process.process is not None
        os.killpg(doomed.process.process.pid, signal.SIGKILL)
        doomed.process.process.wait()
    killed = time.monotonic()
    assert second.responses.cancel(cancelled_id).status == "cancelled"
    assert time.monotonic() - killed < CANCEL_WAIT_SECONDS
    assert first.responses.retrieve(failing_id).status == "in_progress"  # not yet taken for abandoned

    ending = list(second.responses.retrieve(failing_id, stream=True, starting_after=0))
    assert [event.type for event in ending[-2:]] == ["error", "response.failed"]
    assert time.monotonic() - killed > STALE_SECONDS
    failed = first.responses.retrieve(failing_id)
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert first.responses.retrieve(cancelled_id).status == "cancelled"
    # Its gRPC streams died with it: tritonserver cancelled them and the engine stopped generating.
    assert engine_goes_idle(triton_server)
