"""Several ledger servers on one PostgreSQL ledger decide one server at a time.

Every command touches its pool, so two servers deciding at once on the same
pool make one of them lose on the pool's version: its work is thrown away
and decided again (a retry), and under steady contention a command can lose
every attempt (ConcurrentUpdateError). Instead, a server takes this advisory
lock of the ledger's database and schema before it decides, and gives it up
once what it decided is committed (with group commit, once the batch is
recorded: one lock for the whole batch). Deciding after the holder's commit,
it reads the holder's events (its cached pools are fast-forwarded), so it
never loses a race to another server that holds the lock too.

The lock is taken by a connection of its own, waiting at most the store
timeout (`ALLOCATION_LEDGER_STORE_TIMEOUT_SECONDS`); PostgreSQL drops it when
that connection ends, so a server that dies holding it blocks nobody.

A server alone on its ledger has nobody to wait for, and taking the lock
costs two round trips a batch: it asks every `RECHECK_SECONDS` whether other
servers serve the ledger (the servers' lock's holders, server_lock.py) and
takes the writers' lock only while they do. A server that starts meanwhile
may race the others for up to that long: races are still safe (the loser
decides again on fresh reads), only slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import errors

RECHECK_SECONDS = 1.0
"""How often a server asks whether other servers serve its ledger."""


def writer_lock_key(schema: str) -> int:
    """The lock's key (a signed 64-bit integer) for the ledger in `schema`;
    not the key of the servers' lock (server_lock.py)."""
    digest = hashlib.sha256(f"allocation-ledger:writers:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresWriterLock:
    """The writers' advisory lock of one ledger (see the module).

    `conninfo`: psycopg connection keywords; `schema`: the ledger's schema;
    `others`: whether other servers serve the ledger now (asked at most
    every RECHECK_SECONDS; None, or when asking raises: assume they do and
    take the lock).
    Connects on first use and again after its connection broke.
    """

    def __init__(
        self,
        conninfo: dict[str, Any],
        schema: str,
        *,
        others: Callable[[], bool] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.key = writer_lock_key(schema)
        self._conninfo = conninfo
        self._connection: psycopg.Connection[Any] | None = None
        self._timeout_set: int | None = None
        self._others = others
        self._monotonic = monotonic
        self._asked_at: float | None = None
        self._shared = True
        self.held = False
        """Whether the lock is held now (False while this server is alone)."""

    def shared(self) -> bool:
        """Whether other servers serve the ledger, as last asked."""
        if self._others is None:
            return True
        now = self._monotonic()
        if self._asked_at is None or now - self._asked_at >= RECHECK_SECONDS:
            try:
                self._shared = self._others()
            except psycopg.Error:
                # Cannot tell (the servers' lock's connection was lost in an
                # outage): take the lock, as when others serve.
                self._shared = True
            self._asked_at = now
        return self._shared

    def _connect(self) -> psycopg.Connection[Any]:
        connection = self._connection
        if connection is None or connection.closed or connection.broken:
            connection = psycopg.connect(
                **self._conninfo,
                autocommit=True,
                application_name="allocation-ledger writer lock",
            )
            self._connection = connection
            self._timeout_set = None
        return connection

    def acquire(self, timeout: float | None) -> bool:
        """Take the lock, waiting at most `timeout` seconds (None: as long
        as it takes); whether it was taken. Raises psycopg's errors when the
        database cannot be reached (nothing is held then).

        A connection kept from an earlier hold that PostgreSQL ended while
        it sat idle (a restart, an administrator, an idle-session timeout)
        held nothing: the lock is asked for once more on a new connection,
        as the event store's pool replaces such connections, rather than
        failing a command while the database is up.
        """
        if not self.shared():
            return True  # alone: nobody to wait for, nothing to hold
        kept = self._connection is not None and not (
            self._connection.closed or self._connection.broken
        )
        try:
            self.held = self._take(timeout)
        except psycopg.OperationalError:
            if not kept:
                raise
            self.held = self._take(timeout)
        return self.held

    def _take(self, timeout: float | None) -> bool:
        """One try of `acquire`; the connection is closed if it raised."""
        connection = self._connect()
        milliseconds = 0 if timeout is None else max(1, round(timeout * 1000))
        try:
            if self._timeout_set != milliseconds:
                connection.execute(f"SET lock_timeout = {milliseconds}")
                self._timeout_set = milliseconds
            connection.execute("SELECT pg_advisory_lock(%s)", (self.key,))
        except errors.LockNotAvailable:
            return False
        except BaseException:
            self.close()
            raise
        return True

    def release(self) -> None:
        """Give the lock up. A connection that broke meanwhile held nothing
        any more (PostgreSQL dropped the lock with it): it is closed."""
        connection = self._connection
        if connection is None or not self.held:
            return
        self.held = False
        try:
            connection.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error:
            self.close()

    def close(self) -> None:
        """Close the lock's connection (giving the lock up if held)."""
        connection, self._connection = self._connection, None
        self._timeout_set = None
        self.held = False
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                connection.close()
