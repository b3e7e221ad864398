"""Failures of the ledger's database: telling them from the ledger's own
errors, naming their cause, and saying whether a write that failed may have
been committed anyway.

Causes are worded for clients ("the ledger's database is unreachable:
connection refused"): no host, port or path (the server logs those).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import psycopg
from eventsourcing.persistence import PersistenceError
from psycopg_pool import PoolTimeout

from allocation_ledger.adapters.storage.store_health import (
    UNREACHABLE,
    StoreProbe,
    connect_failure,
    first_line,
)

_BUSY_SQLSTATES = ("55P03", "57014", "40001", "40P01")
"""Lock not available, statement cancelled (a timeout), serialization
failure, deadlock: the database is there but busy."""
_GONE_SQLSTATE_PREFIXES = ("08", "57P")
"""Connection exceptions, and the server shutting down or crashing: the
server may have committed before it said so."""


def is_store_error(error: BaseException) -> bool:
    """Whether `error` came from the database rather than from the ledger's
    rules (which raise LedgerError)."""
    return isinstance(error, (PersistenceError, sqlite3.Error, psycopg.Error))


def write_may_be_committed(error: BaseException) -> bool:
    """Whether a write that raised `error` may have been committed anyway.

    Only when a PostgreSQL connection was lost (or the server went away)
    after the write was sent: the COMMIT may have been carried out without
    its answer arriving. A write that never got a connection, that the
    server refused, or that SQLite failed (a SQLite transaction is all or
    nothing, and says so) was not committed.
    """
    driver = _driver_error(error)
    if not isinstance(driver, psycopg.Error) or isinstance(driver, PoolTimeout):
        return False
    sqlstate = driver.sqlstate
    return sqlstate is None or sqlstate.startswith(_GONE_SQLSTATE_PREFIXES)


def store_cause(error: BaseException, probe: StoreProbe | None) -> str:
    """What went wrong with the database, for a client to read.

    When the PostgreSQL pool gave no connection in time, `probe` (if any) is
    asked why (one connection attempt, up to about 2 s).
    """
    driver = _driver_error(error)
    if isinstance(driver, PoolTimeout):
        state = probe.check() if probe is not None else None
        if state is not None and state.problem is not None:
            return state.problem
        return (
            "the ledger's database gave this server no connection in time "
            "(it was reconnecting, or every connection was in use)"
        )
    if isinstance(driver, psycopg.Error):
        return _postgres_cause(driver)
    message = first_line(driver)
    lowered = message.lower()
    if "locked" in lowered or "busy" in lowered:
        return f"the ledger's database is busy: {message}"
    if "unable to open" in lowered:
        return f"the ledger's database cannot be opened: {message}"
    return f"the ledger's database cannot be written: {message}"


def _postgres_cause(error: psycopg.Error) -> str:
    message = first_line(error)
    sqlstate = error.sqlstate
    if sqlstate is None:
        if message.startswith(("connection failed", "connection to server")):
            return f"{UNREACHABLE}: {connect_failure(error)}"
        return f"the connection to the ledger's database was lost: {message}"
    if sqlstate.startswith(_GONE_SQLSTATE_PREFIXES):
        return f"the ledger's database went away: {message}"
    if sqlstate in _BUSY_SQLSTATES:
        return f"the ledger's database is busy: {message}"
    return f"the ledger's database refused the command: {message}"


def _driver_error(error: BaseException) -> BaseException:
    """The database driver's own error behind `error` (eventsourcing wraps
    psycopg's and sqlite3's), else `error` itself."""
    for link in _chain(error):
        if isinstance(link, (psycopg.Error, sqlite3.Error)):
            return link
    return error


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
