"""The read models of a SQLite ledger opened for reading only.

Commands that only read must see every event in the log, yet write nothing
to the file. The stored read-model tables are read as they are while they
hold every event. When they lag behind the log (the last commands were not
followed by a query, or a server stopped between writing events and
folding them) or are of an older layout, their rows are copied into a
private in-memory SQLite database with the same tables, the first time
catch-up has something to fold, and the missing events are folded there.
The copy costs one pass over the read-model rows, once per command, only
when the file's read models are behind; the file is never written.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Collection, Sequence
from datetime import datetime
from uuid import UUID

from allocation_ledger.adapters.storage.sql_dialects import SQLiteDialect
from allocation_ledger.adapters.storage.sql_read_models import (
    POSITION_KEY,
    SCHEMA_KEY,
    SQLReadModels,
)
from allocation_ledger.adapters.storage.sql_rows import SCHEMA_VERSION, VIEW_TABLES
from allocation_ledger.projections.store import ListingQuery
from allocation_ledger.projections.usage import UsageQuery, UsageRow
from allocation_ledger.projections.views import AllocationView, CapacityView

POSITION_TABLE = "ledger_view_position"


class ReadOnlyReadModels:
    """A ReadModelStore on a ledger file opened read-only (see the module).

    `uri`: the read-only SQLite URI of the file (ledger_file.read_only_uri).
    """

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._file: SQLiteDialect | None = None
        self._memory: SQLiteDialect | None = None
        if _stored_layout(uri) == SCHEMA_VERSION:
            self._file = SQLiteDialect(uri, uri=True)
            self._models = SQLReadModels(self._file)
        else:
            self._models = self._in_memory(copy=False)

    @property
    def copied(self) -> bool:
        """Whether the rows are now read from the in-memory copy."""
        return self._memory is not None

    def _in_memory(self, *, copy: bool) -> SQLReadModels:
        """Empty tables in memory at position 0, or (`copy`) the file's rows."""
        self._memory = SQLiteDialect("file::memory:", uri=True)
        models = SQLReadModels(self._memory)
        models.create_tables()
        if copy:
            self._memory.copy_rows(self._uri, (POSITION_TABLE, *VIEW_TABLES))
        if self._file is not None:
            self._file.close()
            self._file = None
        return models

    def close(self) -> None:
        for dialect in (self._file, self._memory):
            if dialect is not None:
                dialect.close()

    # -- the ReadModelStore protocol: reads go to whichever copy is current --

    def position(self) -> int:
        return self._models.position()

    def allocations(self, ids: Collection[UUID]) -> dict[UUID, AllocationView]:
        return self._models.allocations(ids)

    def capacities(self, ids: Collection[UUID]) -> dict[UUID, CapacityView]:
        return self._models.capacities(ids)

    def commit(
        self,
        *,
        expected: int,
        position: int,
        allocations: Sequence[AllocationView],
        capacities: Sequence[CapacityView],
    ) -> bool:
        """Fold into the in-memory copy, making it first if need be."""
        if self._memory is None:
            self._models = self._in_memory(copy=True)
        return self._models.commit(
            expected=expected,
            position=position,
            allocations=allocations,
            capacities=capacities,
        )

    def get_allocation(self, allocation_id: str) -> AllocationView | None:
        return self._models.get_allocation(allocation_id)

    def list_allocations(self, query: ListingQuery) -> list[AllocationView]:
        return self._models.list_allocations(query)

    def due_allocations(self, now: datetime, limit: int) -> list[AllocationView]:
        return self._models.due_allocations(now, limit)

    def count_unfinished(self) -> dict[tuple[str, str], int]:
        return self._models.count_unfinished()

    def get_capacity(self, pool: str) -> CapacityView | None:
        return self._models.get_capacity(pool)

    def list_capacities(self) -> list[CapacityView]:
        return self._models.list_capacities()

    def usage(self, query: UsageQuery, now: datetime) -> list[UsageRow]:
        return self._models.usage(query, now)

    def clear(self) -> None:
        """Start again from empty tables in memory (the file keeps its rows)."""
        if self._memory is None:
            self._models = self._in_memory(copy=False)
        else:
            self._models.clear()


def _stored_layout(uri: str) -> int | None:
    """The layout version of the file's read-model tables (None: none)."""
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        names = {
            row[0]
            for row in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
            )
        }
        if not {POSITION_TABLE, *VIEW_TABLES} <= names:
            return None
        rows = dict(connection.execute(f"SELECT name, position FROM {POSITION_TABLE}"))
    if SCHEMA_KEY in rows:
        return int(rows[SCHEMA_KEY])
    return 1 if POSITION_KEY in rows else None
