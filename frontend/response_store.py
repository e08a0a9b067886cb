"""Persistence of the Responses API: responses, their input items, status transitions and stream events.

`ResponseStore` is the interface; `open_store(url)` picks the implementation by URL scheme. SQLite (stdlib
`sqlite3`, one file, WAL) is the default and fits one host; PostgreSQL (`postgresql://`,
frontend.response_store_postgres) is shared by frontend replicas on any number of hosts. The store speaks
JSON-ready dicts and knows nothing of HTTP or of how a response is generated.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON = dict[str, Any]
# libpq's URL schemes.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass
class StoredResponse:
    """One row of the store."""

    id: str
    # False: created with store=false; only the id is kept, so retrieval can say why it is refused.
    stored: bool
    # The response object as last written (empty when not stored).
    body: JSON
    # The response this one continues, for rebuilding a conversation.
    previous_response_id: str | None
    # Tenant that created it (frontend.tenancy), None when API keys were not isolated.
    owner: str | None = None
    # When it was last written or kept alive (`keep_alive`), in seconds by the store's own clock.
    updated_at: float = 0.0
    # How long before this read that was, by the same clock.
    idle_seconds: float = 0.0


@dataclass
class StoredConversation:
    """One conversation of the store (its items are read apart)."""

    id: str
    # The conversation object as last written.
    body: JSON
    # Tenant that created it (frontend.tenancy), None when API keys were not isolated.
    owner: str | None = None


class ResponseStore(ABC):
    """Responses by id. Every method is one atomic transaction; async callers run them in a thread."""

    @abstractmethod
    def create(
        self, response: JSON, input_items: list[JSON], previous_response_id: str | None, owner: str | None
    ) -> None:
        """Insert a new response with its input items (in order) and its first status."""

    @abstractmethod
    def remember_unstored(self, response_id: str, owner: str | None) -> None:
        """Record that `response_id` existed with store=false (nothing else is kept)."""

    @abstractmethod
    def update(
        self, response: JSON, events: list[JSON] | None = None, conversation_items: list[JSON] | None = None
    ) -> None:
        """Replace a response's body (recording its status transition) and optionally its stream events;
        a response deleted meanwhile stays deleted, and one ended as abandoned stays ended. With
        `conversation_items` (a turn that ended), the same transaction appends them to the response's
        conversation (none when the response stays deleted or ended, or the conversation is gone)."""

    @abstractmethod
    def get(self, response_id: str) -> StoredResponse | None: ...

    @abstractmethod
    def input_items(self, response_id: str) -> list[JSON]:
        """The input items of one response, in the order they were given."""

    @abstractmethod
    def events(self, response_id: str, starting_after: int) -> list[JSON]:
        """Stored stream events with a sequence number above `starting_after`."""

    @abstractmethod
    def statuses(self, response_id: str) -> list[str]:
        """The statuses a response went through, oldest first."""

    @abstractmethod
    def delete(self, response_id: str) -> bool:
        """Remove a response and everything stored with it; False if there was none."""

    @abstractmethod
    def append_events(self, response_id: str, events: list[JSON]) -> None:
        """Store stream events of a response still running, for followers on other replicas; events
        already stored are left as they are, and a deleted response gets none."""

    @abstractmethod
    def request_cancel(self, response_id: str) -> None:
        """Ask the replica running a background response to cancel it."""

    @abstractmethod
    def stopped_elsewhere(self, response_ids: list[str]) -> list[str]:
        """Those of `response_ids` whose cancellation another replica asked for, that it deleted, or that it
        ended as abandoned."""

    @abstractmethod
    def keep_alive(self, response_ids: list[str]) -> None:
        """Mark responses as still being generated (their `updated_at` moves): followers on other replicas
        tell a running response from one whose replica died."""

    @abstractmethod
    def end_abandoned(self, response: JSON, final_events: list[JSON], idle_seconds: float) -> bool:
        """Store `response` (a final status) over a queued or running one that nobody has written or kept
        alive for `idle_seconds` by the store's clock (its replica died), with `final_events` appended
        after its stored events (numbered on from them). False, and nothing written, when it is not such a
        response (still kept alive, ended, deleted). The replica that ran it, should it come back, finds
        it stopped (`stopped_elsewhere`) and its writes ignored."""

    @abstractmethod
    def create_conversation(self, conversation: JSON, items: list[JSON], owner: str | None) -> None:
        """Insert a new conversation with its first items (in order)."""

    @abstractmethod
    def get_conversation(self, conversation_id: str) -> StoredConversation | None: ...

    @abstractmethod
    def update_conversation(self, conversation: JSON) -> bool:
        """Replace a conversation's body; False when there is no such conversation."""

    @abstractmethod
    def delete_conversation(self, conversation_id: str) -> bool:
        """Delete a conversation and its items; False when there was none."""

    @abstractmethod
    def conversation_items(self, conversation_id: str) -> list[JSON]:
        """A conversation's items, oldest first."""

    @abstractmethod
    def add_conversation_items(self, conversation_id: str, items: list[JSON]) -> bool:
        """Append items after every earlier one (appends of several replicas are ordered, never
        interleaved); False, with nothing kept, when the conversation is gone."""

    @abstractmethod
    def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        """Take one item out of a conversation; False when it holds no such item."""

    @abstractmethod
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    stored INTEGER NOT NULL,
    status TEXT,
    previous_response_id TEXT,
    body TEXT NOT NULL,
    updated_at REAL NOT NULL,
    owner TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    abandoned INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS input_items (
    response_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (response_id, position)
);
CREATE TABLE IF NOT EXISTS status_transitions (
    response_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS status_transitions_by_response ON status_transitions (response_id);
CREATE TABLE IF NOT EXISTS stream_events (
    response_id TEXT NOT NULL,
    sequence_number INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (response_id, sequence_number)
);
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    owner TEXT
);
CREATE TABLE IF NOT EXISTS conversation_items (
    conversation_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (conversation_id, position)
);
"""


class SqlResponseStore(ResponseStore):
    """The store in SQL that SQLite and PostgreSQL both run (`?` marks a parameter; `_statement` turns it
    into the driver's marker). Subclasses own the connection: `_transaction` for writes, `_reading` for
    reads."""

    # What orders a response's status transitions.
    _TRANSITION_ORDER = "rowid"
    # What keeps a row from being deleted between reading it and writing beside it in one transaction
    # (SQLite's write transactions already hold the whole database).
    _ROW_SHARE_LOCK = ""
    # What makes a second writer of the same row wait for the first's transaction to end.
    _ROW_UPDATE_LOCK = ""
    # The store's clock in seconds since the epoch, as SQL: `updated_at` is written and compared by it, so
    # replicas on hosts whose clocks differ agree on how long a response has been idle.
    _NOW = "((julianday('now') - 2440587.5) * 86400.0)"

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """One atomic transaction on a DB-API connection, committed on exit, rolled back on an error."""

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Any]:
        """A DB-API connection for reads."""

    def _statement(self, sql: str) -> str:
        return sql

    def _execute(self, db: Any, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
        return db.execute(self._statement(sql), parameters)

    def _execute_many(self, db: Any, sql: str, rows: list[tuple[Any, ...]]) -> None:
        cursor = db.cursor()
        try:
            cursor.executemany(self._statement(sql), rows)
        finally:
            cursor.close()

    def create(
        self, response: JSON, input_items: list[JSON], previous_response_id: str | None, owner: str | None
    ) -> None:
        with self._transaction() as db:
            self._execute(
                db,
                "INSERT INTO responses (id, stored, status, previous_response_id, body, updated_at, owner)"
                f" VALUES (?, ?, ?, ?, ?, {self._NOW}, ?)",
                (response["id"], True, response["status"], previous_response_id, json.dumps(response), owner),
            )
            self._execute_many(
                db,
                "INSERT INTO input_items (response_id, position, body) VALUES (?, ?, ?)",
                [(response["id"], index, json.dumps(item)) for index, item in enumerate(input_items)],
            )
            self._execute(
                db,
                f"INSERT INTO status_transitions (response_id, status, at) VALUES (?, ?, {self._NOW})",
                (response["id"], response["status"]),
            )

    def remember_unstored(self, response_id: str, owner: str | None) -> None:
        with self._transaction() as db:
            self._execute(
                db,
                "INSERT INTO responses (id, stored, status, previous_response_id, body, updated_at, owner)"
                f" VALUES (?, ?, NULL, NULL, '{{}}', {self._NOW}, ?)",
                (response_id, False, owner),
            )

    def update(
        self, response: JSON, events: list[JSON] | None = None, conversation_items: list[JSON] | None = None
    ) -> None:
        with self._transaction() as db:
            updated = self._execute(
                db,
                f"UPDATE responses SET status = ?, body = ?, updated_at = {self._NOW} WHERE id = ? AND NOT abandoned",
                (response["status"], json.dumps(response), response["id"]),
            ).rowcount
            if not updated:
                # Deleted while it was being generated, or ended elsewhere as abandoned: it stays so.
                return
            self._execute(
                db,
                f"INSERT INTO status_transitions (response_id, status, at) VALUES (?, ?, {self._NOW})",
                (response["id"], response["status"]),
            )
            if events is not None:
                self._execute(db, "DELETE FROM stream_events WHERE response_id = ?", (response["id"],))
                self._execute_many(
                    db,
                    "INSERT INTO stream_events (response_id, sequence_number, body) VALUES (?, ?, ?)",
                    [(response["id"], event["sequence_number"], json.dumps(event)) for event in events],
                )
            if conversation_items:
                self._append_conversation_items(db, response["conversation"]["id"], conversation_items)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._reading() as db:
            row = self._execute(
                db,
                "SELECT stored, body, previous_response_id, owner, updated_at,"
                f" {self._NOW} - updated_at FROM responses WHERE id = ?",
                (response_id,),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(response_id, bool(row[0]), json.loads(row[1]), row[2], row[3], row[4], row[5])

    def input_items(self, response_id: str) -> list[JSON]:
        with self._reading() as db:
            rows = self._execute(
                db, "SELECT body FROM input_items WHERE response_id = ? ORDER BY position", (response_id,)
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def events(self, response_id: str, starting_after: int) -> list[JSON]:
        with self._reading() as db:
            rows = self._execute(
                db,
                "SELECT body FROM stream_events WHERE response_id = ? AND sequence_number > ?"
                " ORDER BY sequence_number",
                (response_id, starting_after),
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def statuses(self, response_id: str) -> list[str]:
        with self._reading() as db:
            rows = self._execute(
                db,
                f"SELECT status FROM status_transitions WHERE response_id = ? ORDER BY {self._TRANSITION_ORDER}",
                (response_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def delete(self, response_id: str) -> bool:
        with self._transaction() as db:
            deleted = self._execute(db, "DELETE FROM responses WHERE id = ?", (response_id,)).rowcount
            for table in ("input_items", "status_transitions", "stream_events"):
                self._execute(db, f"DELETE FROM {table} WHERE response_id = ?", (response_id,))
        return deleted > 0

    def append_events(self, response_id: str, events: list[JSON]) -> None:
        with self._transaction() as db:
            exists = self._execute(
                db, f"SELECT 1 FROM responses WHERE id = ? AND NOT abandoned{self._ROW_SHARE_LOCK}", (response_id,)
            )
            if exists.fetchone() is None:
                return
            self._execute_many(
                db,
                "INSERT INTO stream_events (response_id, sequence_number, body) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                [(response_id, event["sequence_number"], json.dumps(event)) for event in events],
            )

    def request_cancel(self, response_id: str) -> None:
        with self._transaction() as db:
            self._execute(db, "UPDATE responses SET cancel_requested = ? WHERE id = ?", (True, response_id))

    def stopped_elsewhere(self, response_ids: list[str]) -> list[str]:
        if not response_ids:
            return []
        with self._reading() as db:
            rows = self._execute(
                db,
                f"SELECT id, cancel_requested, abandoned FROM responses WHERE id IN ({self._marks(response_ids)})",
                tuple(response_ids),
            ).fetchall()
        running = {row[0] for row in rows if not row[1] and not row[2]}
        return [response_id for response_id in response_ids if response_id not in running]

    def keep_alive(self, response_ids: list[str]) -> None:
        if not response_ids:
            return
        with self._transaction() as db:
            self._execute(
                db,
                f"UPDATE responses SET updated_at = {self._NOW} WHERE id IN ({self._marks(response_ids)})",
                tuple(response_ids),
            )

    def end_abandoned(self, response: JSON, final_events: list[JSON], idle_seconds: float) -> bool:
        with self._transaction() as db:
            ended = self._execute(
                db,
                f"UPDATE responses SET status = ?, body = ?, updated_at = {self._NOW}, abandoned = ?"
                f" WHERE id = ? AND status IN ('queued', 'in_progress') AND updated_at < {self._NOW} - ?",
                (response["status"], json.dumps(response), True, response["id"], idle_seconds),
            ).rowcount
            if not ended:
                return False
            self._execute(
                db,
                f"INSERT INTO status_transitions (response_id, status, at) VALUES (?, ?, {self._NOW})",
                (response["id"], response["status"]),
            )
            last = self._execute(
                db, "SELECT MAX(sequence_number) FROM stream_events WHERE response_id = ?", (response["id"],)
            ).fetchone()[0]
            first = 0 if last is None else last + 1
            self._execute_many(
                db,
                "INSERT INTO stream_events (response_id, sequence_number, body) VALUES (?, ?, ?)",
                [
                    (response["id"], number, json.dumps({**event, "sequence_number": number}))
                    for number, event in enumerate(final_events, start=first)
                ],
            )
        return True

    def create_conversation(self, conversation: JSON, items: list[JSON], owner: str | None) -> None:
        with self._transaction() as db:
            self._execute(
                db,
                "INSERT INTO conversations (id, body, owner) VALUES (?, ?, ?)",
                (conversation["id"], json.dumps(conversation), owner),
            )
            self._insert_conversation_items(db, conversation["id"], 0, items)

    def get_conversation(self, conversation_id: str) -> StoredConversation | None:
        with self._reading() as db:
            row = self._execute(
                db, "SELECT body, owner FROM conversations WHERE id = ?", (conversation_id,)
            ).fetchone()
        return None if row is None else StoredConversation(conversation_id, json.loads(row[0]), row[1])

    def update_conversation(self, conversation: JSON) -> bool:
        with self._transaction() as db:
            return bool(
                self._execute(
                    db, "UPDATE conversations SET body = ? WHERE id = ?", (json.dumps(conversation), conversation["id"])
                ).rowcount
            )

    def delete_conversation(self, conversation_id: str) -> bool:
        with self._transaction() as db:
            # The conversation's row first: that waits for an append holding it (add_conversation_items), and
            # the items' delete after it then sees what that append wrote.
            deleted = self._execute(db, "DELETE FROM conversations WHERE id = ?", (conversation_id,)).rowcount
            self._execute(db, "DELETE FROM conversation_items WHERE conversation_id = ?", (conversation_id,))
            return bool(deleted)

    def conversation_items(self, conversation_id: str) -> list[JSON]:
        with self._reading() as db:
            rows = self._execute(
                db,
                "SELECT body FROM conversation_items WHERE conversation_id = ? ORDER BY position",
                (conversation_id,),
            ).fetchall()
        return [json.loads(row[0]) for row in rows]

    def add_conversation_items(self, conversation_id: str, items: list[JSON]) -> bool:
        with self._transaction() as db:
            return self._append_conversation_items(db, conversation_id, items)

    def delete_conversation_item(self, conversation_id: str, item_id: str) -> bool:
        with self._transaction() as db:
            return bool(
                self._execute(
                    db,
                    "DELETE FROM conversation_items WHERE conversation_id = ? AND item_id = ?",
                    (conversation_id, item_id),
                ).rowcount
            )

    def _append_conversation_items(self, db: Any, conversation_id: str, items: list[JSON]) -> bool:
        # Locking the conversation's row queues other replicas' appends behind this one's positions.
        found = self._execute(
            db, f"SELECT id FROM conversations WHERE id = ?{self._ROW_UPDATE_LOCK}", (conversation_id,)
        ).fetchone()
        if found is None:
            return False
        last = self._execute(
            db, "SELECT MAX(position) FROM conversation_items WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()[0]
        self._insert_conversation_items(db, conversation_id, 0 if last is None else last + 1, items)
        return True

    def _insert_conversation_items(self, db: Any, conversation_id: str, first: int, items: list[JSON]) -> None:
        self._execute_many(
            db,
            "INSERT INTO conversation_items (conversation_id, position, item_id, body) VALUES (?, ?, ?, ?)",
            [
                (conversation_id, position, item["id"], json.dumps(item))
                for position, item in enumerate(items, start=first)
            ],
        )

    @staticmethod
    def _marks(values: list[str]) -> str:
        return ", ".join(["?"] * len(values))


class SQLiteResponseStore(SqlResponseStore):
    """One SQLite file shared by the threads of this process (and by other processes on the same host)."""

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # One connection behind a lock: sqlite3 connections are not safe to use from two threads at once.
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=10.0, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(responses)")}
        if "owner" not in columns:  # a store written before tenants existed: its rows have no owner
            self._db.execute("ALTER TABLE responses ADD COLUMN owner TEXT")
        if "cancel_requested" not in columns:  # nor before cancels crossed replicas
            self._db.execute("ALTER TABLE responses ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0")
        if "abandoned" not in columns:  # nor before abandoned responses were ended
            self._db.execute("ALTER TABLE responses ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        # No transaction: BEGIN IMMEDIATE would take the write lock that other processes' readers wait on.
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()


def default_store_url() -> str:
    """`$TRITONLLM_RESPONSE_STORE`, else a database in the user's state directory (XDG)."""
    if os.environ.get("TRITONLLM_RESPONSE_STORE"):
        return os.environ["TRITONLLM_RESPONSE_STORE"]
    return f"sqlite:///{state_dir() / 'responses.db'}"


def state_dir() -> Path:
    """Where the frontend keeps what outlives it by default: tritonllm/ in the user's XDG state directory."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tritonllm"


def sqlite_path(url: str) -> str:
    """SQLAlchemy's spelling: `sqlite:///relative.db`, `sqlite:////absolute.db`, `sqlite://` in memory."""
    rest = url[len("sqlite://") :]
    if rest == "":
        return ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise ValueError(f"response store URL {url!r} names no file: use sqlite:///PATH")
    return rest[1:]


def check_store_url(url: str) -> None:
    """Raises ValueError for a URL `open_store` cannot open (checked before anything starts)."""
    if url.startswith("sqlite://"):
        sqlite_path(url)
    elif not url.startswith(POSTGRES_SCHEMES):
        scheme = url.split("://", 1)[0] if "://" in url else url
        raise ValueError(
            f"unsupported response store {scheme!r}: use sqlite:///PATH (one host) or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB (shared by replicas)"
        )


def open_store(url: str) -> ResponseStore:
    check_store_url(url)
    if url.startswith("sqlite://"):
        return SQLiteResponseStore(sqlite_path(url))
    # Imported here: that module builds on this one's interface.
    from frontend.response_store_postgres import PostgresResponseStore

    return PostgresResponseStore(url)
