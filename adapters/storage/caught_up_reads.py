"""Read models read where the caller runs, when they already hold every event.

A query normally runs in a worker thread: it may have to catch the read
models up with the log first, which writes (and may wait for the database's
write lock). When the read models of a SQLite ledger already hold every
event, there is nothing to wait for: a read in WAL mode takes no lock that
a writer holds. `CaughtUpReads` answers those queries on a connection of its
own, without waiting for anything: each query first checks, in one read of
the database, that the read models' position is the log's last event, and
raises `NotCaughtUp` when it is not (or when the database asks it to wait),
so that the caller asks the read models that catch up instead.

Read-your-writes holds as with catch-up (design.md, "Read models"): every
event written before the check, by this process or another, is at or below
the log's last position, which the read models had reached; reads after the
check see the read models at that position or later.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from allocation_ledger.adapters.storage.sql_dialects import SQLiteDialect
from allocation_ledger.adapters.storage.sql_read_models import (
    POSITION_KEY,
    SQLReadModels,
)
from allocation_ledger.projections.catchup import Projector
from allocation_ledger.projections.queries import ReadModels


class NotCaughtUp(Exception):
    """The read models lag behind the log, or the database asked to wait:
    ask the read models that catch up."""


class CaughtUpReads(ReadModels):
    """ReadModels of a SQLite ledger file that never catch up and never
    wait (see the module): a query raises NotCaughtUp instead.

    `database`: the ledger file; `events_table`: the name of its events
    table; `projector`: the service's, kept as `projector` for callers that
    look at it (this object never runs it). Close with `close`.
    """

    def __init__(self, database: Path, events_table: str, projector: Projector) -> None:
        super().__init__(projector)
        self._dialect = SQLiteDialect(str(database), wait_seconds=0)
        self.store = SQLReadModels(self._dialect)
        self._check = (
            "SELECT (SELECT position FROM ledger_view_position WHERE name = ?), "
            f"(SELECT MAX(rowid) FROM {events_table})"
        )

    def catch_up(self) -> int:
        """The read models' position, when it is the log's last event;
        NotCaughtUp otherwise, or when the database is busy."""
        try:
            with self._dialect.transaction(write=False) as cursor:
                cursor.execute(self._check, (POSITION_KEY,))
                position, end = cursor.fetchone()
        except sqlite3.OperationalError as error:
            raise NotCaughtUp(str(error)) from error
        if position is None or (end is not None and end > position):
            raise NotCaughtUp
        return int(position)

    def close(self) -> None:
        self._dialect.close()
