"""The response stores, SQLite and PostgreSQL alike: atomic writes, status history, events, deletion,
reopening; PostgreSQL's sharing between replicas and its reconnection; URL parsing."""

from __future__ import annotations

import concurrent.futures
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from frontend.config import config_from_args
from frontend.response_store import SQLiteResponseStore, check_store_url, open_store, sqlite_path
from tests.postgres import PostgresServer


def response(status: str, **extra: object) -> dict:
    return {"id": "resp_1", "status": status, "output": [], **extra}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'responses.db'}"
    postgres: PostgresServer = request.getfixturevalue("postgres")
    return postgres.new_database(f"store_{abs(hash(request.node.name)):x}")


def test_round_trip_survives_reopening(store_url: str) -> None:
    url = store_url
    store = open_store(url)
    items = [{"type": "message", "id": "msg_1", "role": "user", "content": "hi"}]
    store.create(response("queued"), items, previous_response_id="resp_0", owner="tenant-a")
    store.update(response("in_progress"))
    events = [{"type": "response.created", "sequence_number": 0}, {"type": "x", "sequence_number": 1}]
    store.update(response("completed", output=[{"type": "message"}]), events)
    store.close()

    reopened = open_store(url)
    found = reopened.get("resp_1")
    assert found is not None and found.stored and found.previous_response_id == "resp_0"
    assert found.owner == "tenant-a"
    assert found.body["status"] == "completed" and found.body["output"] == [{"type": "message"}]
    assert reopened.input_items("resp_1") == items
    assert reopened.statuses("resp_1") == ["queued", "in_progress", "completed"]
    assert reopened.events("resp_1", 0) == events[1:]
    assert reopened.delete("resp_1") and not reopened.delete("resp_1")
    assert reopened.get("resp_1") is None and reopened.input_items("resp_1") == []
    reopened.close()


def test_failed_transaction_leaves_nothing(store_url: str) -> None:
    store = open_store(store_url)
    store.create(response("completed"), [], None, None)
    with pytest.raises(Exception, match="(?i)unique"):
        store.create(response("completed"), [{"type": "message"}], None, None)
    assert store.input_items("resp_1") == [] and store.statuses("resp_1") == ["completed"]


def test_a_response_deleted_while_generating_stays_deleted(store_url: str) -> None:
    store = open_store(store_url)
    store.create(response("in_progress"), [], None, None)
    store.delete("resp_1")
    store.update(response("completed"), [{"type": "response.completed", "sequence_number": 0}])
    assert store.get("resp_1") is None and store.statuses("resp_1") == [] and store.events("resp_1", -1) == []


def test_unstored_responses_are_remembered_without_content(store_url: str) -> None:
    store = open_store(store_url)
    store.remember_unstored("resp_2", "tenant-b")
    found = store.get("resp_2")
    assert found is not None and not found.stored and found.body == {} and found.owner == "tenant-b"


def test_running_responses_share_events_and_cancel_requests(store_url: str) -> None:
    """What a replica running a background response tells the others through the store."""
    store = open_store(store_url)
    store.create(response("in_progress"), [], None, None)
    first = [{"type": "response.created", "sequence_number": 0}, {"type": "x", "sequence_number": 1}]
    store.append_events("resp_1", first)
    store.append_events("resp_1", [*first[1:], {"type": "y", "sequence_number": 2}])  # one already stored
    assert [event["sequence_number"] for event in store.events("resp_1", -1)] == [0, 1, 2]
    # Gone (deleted by another replica) or asked to cancel: the running replica stops it.
    assert store.stopped_elsewhere(["resp_1", "resp_gone"]) == ["resp_gone"] and store.stopped_elsewhere([]) == []
    store.request_cancel("resp_1")
    assert store.stopped_elsewhere(["resp_1", "resp_gone"]) == ["resp_1", "resp_gone"]
    before = (store.get("resp_1") or pytest.fail("stored")).updated_at
    time.sleep(0.01)
    store.keep_alive(["resp_1", "resp_gone"])
    assert (store.get("resp_1") or pytest.fail("stored")).updated_at > before
    # The final update replaces the shared events with the whole log.
    store.update(response("cancelled"), [*first, {"type": "response.cancelled", "sequence_number": 2}])
    assert [event["type"] for event in store.events("resp_1", 0)] == ["x", "response.cancelled"]
    store.delete("resp_1")
    store.append_events("resp_1", first)  # deleted meanwhile: nothing comes back
    assert store.events("resp_1", -1) == []
    store.close()


def test_an_abandoned_response_is_ended_once_idle_and_stays_ended(store_url: str) -> None:
    """A running response nobody keeps alive is ended by the store's clock; its replica, should it come back,
    finds it stopped and its writes ignored."""
    store = open_store(store_url)
    store.create(response("in_progress"), [], None, None)
    store.append_events("resp_1", [{"type": "response.created", "sequence_number": 0}])
    ending = [{"type": "error", "sequence_number": -1}, {"type": "response.failed", "sequence_number": -1}]
    assert not store.end_abandoned(response("failed"), ending, idle_seconds=30.0)  # kept alive just now
    time.sleep(0.3)
    store.keep_alive(["resp_1"])
    assert not store.end_abandoned(response("failed"), ending, idle_seconds=0.2)  # alive again
    time.sleep(0.3)
    assert (store.get("resp_1") or pytest.fail("stored")).idle_seconds >= 0.25
    assert store.end_abandoned(response("failed"), ending, idle_seconds=0.2)
    assert not store.end_abandoned(response("cancelled"), [], idle_seconds=0.0)  # already ended
    assert (store.get("resp_1") or pytest.fail("stored")).body["status"] == "failed"
    assert store.statuses("resp_1") == ["in_progress", "failed"]
    assert [(event["type"], event["sequence_number"]) for event in store.events("resp_1", -1)] == [
        ("response.created", 0), ("error", 1), ("response.failed", 2),
    ]  # fmt: skip
    assert store.stopped_elsewhere(["resp_1"]) == ["resp_1"]
    store.append_events("resp_1", [{"type": "x", "sequence_number": 3}])
    store.update(response("completed"), [])
    assert (store.get("resp_1") or pytest.fail("stored")).body["status"] == "failed"
    assert len(store.events("resp_1", -1)) == 3
    # Only queued or running responses are ever ended so, and only those stored.
    store.create(response("completed", id="resp_2"), [], None, None)
    store.remember_unstored("resp_3", None)
    time.sleep(0.05)
    assert not store.end_abandoned(response("failed", id="resp_2"), [], idle_seconds=0.0)
    assert not store.end_abandoned(response("failed", id="resp_3"), [], idle_seconds=0.0)
    assert not store.end_abandoned(response("failed", id="resp_gone"), [], idle_seconds=0.0)
    store.close()


def test_a_store_from_before_tenants_gains_the_owner_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE responses (id TEXT PRIMARY KEY, stored INTEGER NOT NULL, status TEXT,"
            " previous_response_id TEXT, body TEXT NOT NULL, updated_at REAL NOT NULL)"
        )
        old.execute("INSERT INTO responses VALUES ('resp_old', 1, 'completed', NULL, '{\"id\": \"resp_old\"}', 0)")
    old.close()
    store = SQLiteResponseStore(str(path))
    found = store.get("resp_old")
    assert found is not None and found.owner is None and found.body == {"id": "resp_old"}
    assert store.stopped_elsewhere(["resp_old"]) == []
    assert not store.end_abandoned({"id": "resp_old", "status": "failed"}, [], idle_seconds=0.0)
    store.create(response("completed"), [], None, "tenant-a")
    assert (store.get("resp_1") or found).owner == "tenant-a"


def test_a_postgresql_store_from_before_abandoned_responses_gains_the_column(postgres: PostgresServer) -> None:
    url = postgres.new_database("before_abandoned")
    with psycopg.connect(url, autocommit=True) as old:
        old.execute(
            "CREATE TABLE responses (id TEXT PRIMARY KEY, stored BOOLEAN NOT NULL, status TEXT,"
            " previous_response_id TEXT, body TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL, owner TEXT,"
            " cancel_requested BOOLEAN NOT NULL DEFAULT FALSE)"
        )
        old.execute("INSERT INTO responses VALUES ('resp_1', TRUE, 'in_progress', NULL, '{}', 0, NULL, FALSE)")
    store = open_store(url)
    assert store.stopped_elsewhere(["resp_1"]) == []
    assert store.end_abandoned(response("failed"), [], idle_seconds=60.0)  # written at the epoch
    assert store.stopped_elsewhere(["resp_1"]) == ["resp_1"]
    store.close()
    open_store(url).close()  # the column is there now: nothing to add


def test_store_urls() -> None:
    assert sqlite_path("sqlite:////var/lib/x.db") == "/var/lib/x.db"
    assert sqlite_path("sqlite:///relative.db") == "relative.db"
    assert sqlite_path("sqlite://") == ":memory:"
    for url in ("sqlite:///x.db", "postgresql://user:secret@db:5432/responses", "postgres://db/responses"):
        check_store_url(url)
    for url in ("redis://cache", "sqlite:///", "mysql://db/responses"):
        with pytest.raises(ValueError):
            check_store_url(url)


def test_postgresql_is_shared_by_replicas_and_outlives_a_server_restart(postgres: PostgresServer) -> None:
    url = postgres.new_database("shared")
    # Two replicas opening the same empty database at once: one creates the tables, the other waits.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first, second = pool.map(open_store, [url, url])
    first.create(response("in_progress"), [{"type": "message"}], None, "tenant-a")
    found = second.get("resp_1")
    assert found is not None and found.owner == "tenant-a" and second.input_items("resp_1") == [{"type": "message"}]
    postgres.stop()
    postgres.start()
    # Both replicas' connections died with the server: each opens a new one and the calls go through.
    second.update(response("completed"))
    assert first.statuses("resp_1") == ["in_progress", "completed"]
    assert first.delete("resp_1") and second.get("resp_1") is None
    first.close()
    second.close()


def test_response_store_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert config_from_args(["--model", "m", "--response-store", "sqlite://"]).response_store == "sqlite://"
    monkeypatch.setenv("TRITONLLM_RESPONSE_STORE", f"sqlite:///{tmp_path}/r.db")
    assert config_from_args(["--model", "m"]).response_store == f"sqlite:///{tmp_path}/r.db"
    monkeypatch.delenv("TRITONLLM_RESPONSE_STORE")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert config_from_args(["--model", "m"]).response_store == f"sqlite:///{tmp_path}/tritonllm/responses.db"
    with pytest.raises(SystemExit):
        config_from_args(["--model", "m", "--response-store", "redis://cache"])
    shared = "postgresql://tritonllm@db:5432/responses"
    assert config_from_args(["--model", "m", "--response-store", shared]).response_store == shared


def message(item_id: str, text: str) -> dict:
    return {"type": "message", "id": item_id, "role": "user", "content": text}


def test_conversations_keep_their_items_in_order_and_go_whole(store_url: str) -> None:
    store = open_store(store_url)
    store.create_conversation({"id": "conv_1", "metadata": {}}, [message("msg_1", "a")], owner="tenant-a")
    assert store.add_conversation_items("conv_1", [message("msg_2", "b"), message("msg_3", "c")])
    found = store.get_conversation("conv_1")
    assert found is not None and found.owner == "tenant-a" and found.body["metadata"] == {}
    assert [item["id"] for item in store.conversation_items("conv_1")] == ["msg_1", "msg_2", "msg_3"]
    # An item taken out leaves a gap that later appends do not fill: they go after the last one.
    assert store.delete_conversation_item("conv_1", "msg_3") and not store.delete_conversation_item("conv_1", "msg_3")
    assert store.add_conversation_items("conv_1", [message("msg_4", "d")])
    assert [item["id"] for item in store.conversation_items("conv_1")] == ["msg_1", "msg_2", "msg_4"]
    assert store.update_conversation({"id": "conv_1", "metadata": {"topic": "x"}})
    store.close()

    reopened = open_store(store_url)
    found = reopened.get_conversation("conv_1")
    assert found is not None and found.body["metadata"] == {"topic": "x"}
    assert reopened.delete_conversation("conv_1") and not reopened.delete_conversation("conv_1")
    assert reopened.get_conversation("conv_1") is None and reopened.conversation_items("conv_1") == []
    # Appends to a conversation deleted meanwhile (a response that ended after) keep nothing.
    assert not reopened.add_conversation_items("conv_1", [message("msg_5", "e")])
    assert reopened.conversation_items("conv_1") == []
    assert not reopened.update_conversation({"id": "conv_1", "metadata": {}})
    reopened.close()


def test_a_turn_joins_its_conversation_with_its_response_or_not_at_all(store_url: str) -> None:
    store = open_store(store_url)
    store.create_conversation({"id": "conv_1", "metadata": {}}, [], owner=None)
    turn = [message("msg_1", "q"), {**message("msg_2", "a"), "role": "assistant"}]
    store.create(response("in_progress", conversation={"id": "conv_1"}), [], None, None)
    store.update(response("completed", conversation={"id": "conv_1"}), None, turn)
    assert [item["id"] for item in store.conversation_items("conv_1")] == ["msg_1", "msg_2"]
    # A response deleted while it ran stays deleted, and its turn stays out of the conversation.
    store.create({**response("in_progress"), "id": "resp_2", "conversation": {"id": "conv_1"}}, [], None, None)
    assert store.delete("resp_2")
    store.update({**response("completed"), "id": "resp_2", "conversation": {"id": "conv_1"}}, None, [message("msg_3", "x")])
    assert [item["id"] for item in store.conversation_items("conv_1")] == ["msg_1", "msg_2"]
    store.close()
