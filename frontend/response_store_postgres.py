"""The Responses API store in PostgreSQL, shared by every frontend replica that names the same database.

`postgresql://user:password@host:port/dbname` (libpq's URL; `postgres://` too). The tables mirror the SQLite
store's; every write is one transaction on the store's connection, which is reopened when the server
has dropped it (a restart or failover), so a replica outlives its database's restarts.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from frontend.response_store import SqlResponseStore

# Replicas starting together must not race to create the tables: CREATE TABLE IF NOT EXISTS is not safe
# under concurrency in PostgreSQL. Any constant serves as the lock's key; this one spells "tllm".
_SCHEMA_LOCK = 0x746C6C6D
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS responses (
        id TEXT PRIMARY KEY,
        stored BOOLEAN NOT NULL,
        status TEXT,
        previous_response_id TEXT,
        body TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        owner TEXT,
        cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
        abandoned BOOLEAN NOT NULL DEFAULT FALSE
    )""",
    """CREATE TABLE IF NOT EXISTS input_items (
        response_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (response_id, position)
    )""",
    # Transitions keep their order by a sequence: several replicas write them and their clocks differ.
    """CREATE TABLE IF NOT EXISTS status_transitions (
        position BIGSERIAL PRIMARY KEY,
        response_id TEXT NOT NULL,
        status TEXT NOT NULL,
        at DOUBLE PRECISION NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS status_transitions_by_response ON status_transitions (response_id)",
    """CREATE TABLE IF NOT EXISTS stream_events (
        response_id TEXT NOT NULL,
        sequence_number INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (response_id, sequence_number)
    )""",
    """CREATE TABLE IF NOT EXISTS conversations (
        id TEXT PRIMARY KEY,
        body TEXT NOT NULL,
        owner TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS conversation_items (
        conversation_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (conversation_id, position)
    )""",
)


class PostgresResponseStore(SqlResponseStore):
    """One PostgreSQL database shared by the threads of this process and by every other replica."""

    _TRANSITION_ORDER = "position"
    _ROW_SHARE_LOCK = " FOR SHARE"
    _ROW_UPDATE_LOCK = " FOR UPDATE"
    _NOW = "extract(epoch FROM clock_timestamp())::double precision"

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        # One connection behind a lock, as the SQLite store: the frontend's store calls are short and few.
        self._lock = threading.Lock()
        self._db = self._connect()
        with self._transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for statement in _SCHEMA:
                db.execute(statement)
            # Databases written before abandoned responses were ended lack the column. Asked first: ALTER
            # TABLE locks the table against every other replica's reads, even when it changes nothing.
            columns = db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'responses'"
                " AND table_schema = current_schema()"
            ).fetchall()
            if ("abandoned",) not in columns:
                db.execute("ALTER TABLE responses ADD COLUMN abandoned BOOLEAN NOT NULL DEFAULT FALSE")

    def _connect(self) -> psycopg.Connection:
        # Autocommit: the transaction() blocks below are the only transactions, never an implicit one left
        # open. Some store writes run on the frontend's event loop (a response cancelled mid-stream is saved
        # as its generator closes), so a silent network or a stuck server must fail them within seconds:
        # TCP keepalives and a user timeout on the socket, a statement timeout on the server.
        return psycopg.connect(
            self._url,
            autocommit=True,
            connect_timeout=max(1, round(self._connect_timeout)),
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
            tcp_user_timeout=15_000,
            options="-c statement_timeout=10000",
        )

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            db = self._live_connection()
            with db.transaction():
                yield db

    def _live_connection(self) -> psycopg.Connection:
        """The connection, reopened if the server dropped it (a restart, a failover). Asking costs a round
        trip per call, which the Responses API's few calls per response can afford; finding out inside the
        transaction instead would fail a request that could have been served."""
        if not (self._db.closed or self._db.broken):
            try:
                self._db.execute("SELECT 1")
                return self._db
            except psycopg.OperationalError:
                self._db.close()
        self._db = self._connect()
        return self._db

    @contextmanager
    def _reading(self) -> Iterator[psycopg.Connection]:
        # Every read is one statement, and in autocommit one statement is its own snapshot: no BEGIN and
        # COMMIT round trips (followers on other replicas read every 0.2 s).
        with self._lock:
            yield self._live_connection()

    def _statement(self, sql: str) -> str:
        return sql.replace("?", "%s")  # no statement here holds a literal "?"

    def close(self) -> None:
        with self._lock:
            self._db.close()
