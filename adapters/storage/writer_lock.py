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
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import psycopg
from psycopg import errors


def writer_lock_key(schema: str) -> int:
    """The lock's key (a signed 64-bit integer) for the ledger in `schema`;
    not the key of the servers' lock (server_lock.py)."""
    digest = hashlib.sha256(f"allocation-ledger:writers:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PostgresWriterLock:
    """The writers' advisory lock of one ledger (see the module).

    `conninfo`: psycopg connection keywords; `schema`: the ledger's schema.
    Connects on first use and again after its connection broke.
    """

    def __init__(self, conninfo: dict[str, Any], schema: str) -> None:
        self.key = writer_lock_key(schema)
        self._conninfo = conninfo
        self._connection: psycopg.Connection[Any] | None = None

    def _connect(self) -> psycopg.Connection[Any]:
        connection = self._connection
        if connection is None or connection.closed or connection.broken:
            connection = psycopg.connect(
                **self._conninfo,
                autocommit=True,
                application_name="allocation-ledger writer lock",
            )
            self._connection = connection
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
        kept = self._connection is not None and not (
            self._connection.closed or self._connection.broken
        )
        try:
            return self._take(timeout)
        except psycopg.OperationalError:
            if not kept:
                raise
        return self._take(timeout)

    def _take(self, timeout: float | None) -> bool:
        """One try of `acquire`; the connection is closed if it raised."""
        connection = self._connect()
        milliseconds = 0 if timeout is None else max(1, round(timeout * 1000))
        try:
            connection.execute(f"SET lock_timeout = {milliseconds}")
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
        if connection is None:
            return
        try:
            connection.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg.Error:
            self.close()

    def close(self) -> None:
        """Close the lock's connection (giving the lock up if held)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                connection.close()
