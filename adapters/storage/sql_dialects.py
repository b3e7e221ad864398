"""How the SQL read models reach their database: SQLite or PostgreSQL.

Each dialect gives transactions (one connection, behind a lock), its SQL
spelling (placeholders, LEAST/GREATEST, row locks) and a relaxed-durability
mode for rebuilds.
"""

from __future__ import annotations

import select
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

BULK_CACHE_KIB = 64 * 1024
"""SQLite's page cache while a rebuild writes (KiB; its default is 2 MiB): the
tables' indexes take rows in random key order, and a cache smaller than them
reads and writes the same pages again and again as the history grows."""


class Cursor(Protocol):
    """The part of a DB-API cursor the read models use."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Dialect(Protocol):
    """How to reach one kind of SQL database."""

    def transaction(self, *, write: bool) -> Iterator[Cursor]: ...

    def sql(self, statement: str) -> str: ...


class SQLiteDialect:
    """A SQLite file, in WAL mode; a write transaction takes the lock at once.

    Its commits do not wait for the disk (`synchronous=NORMAL`): the read
    models are derived, and in WAL mode a power cut can only lose the last
    commits, rows and position together, never corrupt the file; catch-up
    redoes what was lost. The event log's own connection still waits for
    the disk on every commit, which also makes every read-model commit
    before it durable (one log file). Without this, each query after a
    command waited for the disk once more to fold the command's events.
    """

    def __init__(
        self, path: str, *, uri: bool = False, wait_seconds: float = 30
    ) -> None:
        """`path`: the file, or with `uri` a SQLite URI (`file:...?mode=ro`);
        `wait_seconds`: how long a statement waits for a lock another
        connection holds before it fails with "database is locked"."""
        self._connection = sqlite3.connect(
            path, timeout=30, isolation_level=None, check_same_thread=False, uri=uri
        )
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(f"PRAGMA busy_timeout={int(wait_seconds * 1000)}")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield cursor
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def sql(self, statement: str) -> str:
        return statement

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Commit without waiting for the disk (for a rebuild).

        Read models are derived: losing the last commits in a power cut loses
        rows and their position together, and catch-up redoes them.
        """
        with self._lock:
            row = self._connection.execute("PRAGMA synchronous").fetchone()
            cache = self._connection.execute("PRAGMA cache_size").fetchone()
            self._connection.execute("PRAGMA synchronous=OFF")
            self._connection.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        try:
            yield
        finally:
            with self._lock:
                self._connection.execute(f"PRAGMA synchronous={int(row[0])}")
                self._connection.execute(f"PRAGMA cache_size={int(cache[0])}")

    def copy_rows(self, uri: str, tables: Sequence[str]) -> None:
        """Copy every row of `tables` from the SQLite database at `uri` into
        the same tables here (replacing rows with the same key), in one
        transaction. This database must have been opened with `uri`."""
        with self._lock:
            self._connection.execute("ATTACH DATABASE ? AS source", (uri,))
            try:
                self._connection.execute("BEGIN")
                for table in tables:
                    self._connection.execute(
                        f"INSERT OR REPLACE INTO main.{table} "
                        f"SELECT * FROM source.{table}"
                    )
                self._connection.execute("COMMIT")
            finally:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                self._connection.execute("DETACH DATABASE source")

    least = "MIN"
    greatest = "MAX"
    lock_row = ""  # BEGIN IMMEDIATE already holds the write lock
    schema_lock = ""  # the same

    def close(self) -> None:
        self._connection.close()


class PostgresDialect:
    """A PostgreSQL database, optionally in one schema; reconnects when broken."""

    def __init__(self, connect: Callable[[], Any], schema: str | None = None) -> None:
        self._connect = connect
        self._connection: Any = None
        self._schema = schema
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if (
            self._connection is None
            or self._connection.closed
            or self._connection.broken
            or _hung_up(self._connection)
        ):
            if self._connection is not None:
                self._connection.close()
            self._connection = self._connect()
            if self._schema:
                with self._connection.cursor() as cursor:
                    cursor.execute(f'SET search_path TO "{self._schema}"')
                self._connection.commit()
        return self._connection

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[Cursor]:
        with self._lock:
            connection = self._open()
            try:
                with connection.cursor() as cursor:
                    yield cursor
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def sql(self, statement: str) -> str:
        return statement.replace("?", "%s")

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """Commit without waiting for the WAL flush (for a rebuild; see SQLite)."""
        with self._lock:
            connection = self._open()
            connection.execute("SET synchronous_commit TO off")
            connection.commit()
        try:
            yield
        finally:
            with self._lock:
                if not (connection.closed or connection.broken):
                    connection.execute("SET synchronous_commit TO DEFAULT")
                    connection.commit()

    least = "LEAST"
    greatest = "GREATEST"
    lock_row = " FOR UPDATE"
    # Taken by whoever creates or replaces the read-model tables, until commit
    # (statements after it see what an earlier holder committed).
    schema_lock = (
        "SELECT pg_advisory_xact_lock(hashtext('allocation-ledger:read-models'))"
    )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def _hung_up(connection: Any) -> bool:
    """Whether the server (or something between) closed an idle connection.

    An idle connection has nothing to read unless its peer hung up (or sent
    a notice): then it is replaced before use, rather than failing the next
    query after a database restart or outage. One poll of the socket, no
    round trip.
    """
    poller = select.poll()
    try:
        poller.register(connection.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
