"""Checking the ledger's database from scratch, as a health check does.

A check opens a connection of its own (not one of the event store's pool,
which may all be taken by commands waiting out an outage), reads the
position of the last event, and says what is wrong if anything is, in
words a client may read: no host, port or path is named (the server logs
those).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from dataclasses import dataclass
from typing import Any

from allocation_ledger.adapters.config.settings import Settings

logger = logging.getLogger(__name__)

EVENTS_TABLE = "allocationledger_events"
"""The event log's table in PostgreSQL (the SQLite recorder's is
`stored_events`)."""
CHECK_CONNECT_TIMEOUT = 2
"""Seconds a check waits to connect to PostgreSQL (libpq's least)."""
UNREACHABLE = "the ledger's database is unreachable"


@dataclass(frozen=True)
class StoreState:
    """What a check found: the store, the position of its last event, and
    `problem` (None when the store is reachable and can be written)."""

    store: str
    problem: str | None = None
    last_position: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_json(self) -> dict[str, Any]:
        """The body of /healthz."""
        if self.problem is not None:
            return {
                "status": "unavailable",
                "store": self.store,
                "problem": self.problem,
            }
        return {
            "status": "ok",
            "store": self.store,
            "last_position": self.last_position,
        }


class StoreProbe:
    """Checks the configured store (see the module). `check` blocks for at
    most about CHECK_CONNECT_TIMEOUT seconds against an unreachable
    PostgreSQL; the caller bounds it further if it must."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def check(self) -> StoreState:
        store = self.settings.store
        if store == "postgres":
            return self._check_postgres()
        if store == "sqlite":
            return self._check_sqlite()
        return StoreState(store)

    def _check_postgres(self) -> StoreState:
        import psycopg

        settings = self.settings
        conninfo = settings.postgres_conninfo()
        conninfo["connect_timeout"] = CHECK_CONNECT_TIMEOUT
        where = f"{settings.postgres_host}:{settings.postgres_port}"
        try:
            connection = psycopg.connect(**conninfo, autocommit=True)
        except psycopg.Error as error:
            logger.warning("health check: PostgreSQL at %s: %s", where, error)
            return StoreState("postgres", f"{UNREACHABLE}: {connect_failure(error)}")
        schema = settings.postgres_schema or "public"
        try:
            with connection:
                row = connection.execute(
                    f'SELECT MAX(notification_id) FROM "{schema}".{EVENTS_TABLE}'
                ).fetchone()
        except psycopg.Error as error:
            logger.warning("health check: PostgreSQL at %s: %s", where, error)
            return StoreState(
                "postgres", f"the ledger's database failed: {first_line(error)}"
            )
        return StoreState("postgres", last_position=(row[0] if row else None) or 0)

    def _check_sqlite(self) -> StoreState:
        path = self.settings.database
        try:
            connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
            try:
                row = connection.execute(
                    "SELECT MAX(rowid) FROM stored_events"
                ).fetchone()
            finally:
                connection.close()
        except sqlite3.Error as error:
            logger.warning("health check: SQLite file %s: %s", path, error)
            return StoreState("sqlite", f"the ledger's database failed: {error}")
        if not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
            return StoreState(
                "sqlite",
                "the ledger's database cannot be written: its file is read-only",
            )
        return StoreState("sqlite", last_position=(row[0] if row else None) or 0)


def connect_failure(error: BaseException) -> str:
    """Why libpq could not connect, in its words, without host or port:
    'connection refused', 'timeout expired', 'password authentication failed
    for user "x"'..."""
    line = first_line(error)
    reason = line.rsplit("failed: ", 1)[-1].strip()
    reason = reason.removeprefix("FATAL:").strip()
    return reason[:1].lower() + reason[1:] if reason else type(error).__name__


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip() if text else type(error).__name__
