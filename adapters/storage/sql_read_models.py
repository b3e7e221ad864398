"""Read models kept in SQL tables: in the SQLite file or in PostgreSQL.

Rows and the position they reflect are written in one transaction, and only
if the position is still the one the batch was folded from, so each event is
applied exactly once even when several processes catch up at the same time.

The tables carry the version of their layout (`SCHEMA_VERSION`, a row of
`ledger_view_position`). Tables of an older layout (or of none: written
before the version was kept) are dropped and created anew at position 0 when
the ledger is opened, and the read models are then rebuilt from the event
log: they are derived data, and the log holds every fact they need.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any
from uuid import UUID

from allocation_ledger.adapters.storage.sql_dialects import (
    Cursor,
    PostgresDialect,
    SQLiteDialect,
)
from allocation_ledger.adapters.storage.sql_rows import (
    SCHEMA_VERSION,
    UPSERT_ALLOCATION,
    UPSERT_CAPACITY,
    VIEW_SCHEMA,
    VIEW_TABLES,
    allocation_row,
    capacity_row,
    decode_document,
    listing_row,
)
from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.pool import pool_uuid
from allocation_ledger.domain.values import MILLICORES_PER_CORE
from allocation_ledger.projections.codec import allocation_from_dict, capacity_from_dict
from allocation_ledger.projections.listing_documents import ListingDocument
from allocation_ledger.projections.store import UNFINISHED_STATES, ListingQuery
from allocation_ledger.projections.usage import UsageQuery, UsageRow
from allocation_ledger.projections.views import AllocationView, CapacityView

POSITION_KEY = "read_models"
SCHEMA_KEY = "schema_version"

POSITION_TABLE = """CREATE TABLE IF NOT EXISTS ledger_view_position (
        name TEXT PRIMARY KEY,
        position BIGINT NOT NULL
    )"""


class SQLReadModels:
    """The read-model store on SQL tables (see `ReadModelStore`)."""

    def __init__(self, dialect: SQLiteDialect | PostgresDialect) -> None:
        self.dialect = dialect

    def bulk(self) -> AbstractContextManager[None]:
        """Relaxed durability while a rebuild writes (see the dialects)."""
        return self.dialect.bulk()

    def create_tables(self) -> bool:
        """Create the tables, or bring tables of an older layout to this one.

        Answers True when tables of an older layout were replaced: they are
        then empty, at position 0, to be rebuilt from the log.
        """
        with self.dialect.transaction(write=True) as cursor:
            cursor.execute(POSITION_TABLE)
        return self._upgrade()

    def upgrade(self) -> bool:
        """Bring existing tables of an older layout to this one (see
        `create_tables`); answers True when it did. Reads one row when they
        are current, so it is cheap to call on every open."""
        if self.schema_version() == SCHEMA_VERSION:
            return False
        return self._upgrade()

    def schema_version(self) -> int | None:
        """The layout of the tables: None when there are none yet, 1 when
        they were written before the version was kept."""
        with self.dialect.transaction(write=False) as cursor:
            return self._version(cursor)

    def _version(self, cursor: Cursor) -> int | None:
        cursor.execute(
            self._q(
                "SELECT name, position FROM ledger_view_position WHERE name IN (?, ?)"
            ),
            (POSITION_KEY, SCHEMA_KEY),
        )
        rows = dict(cursor.fetchall())
        if SCHEMA_KEY in rows:
            return int(rows[SCHEMA_KEY])
        return 1 if POSITION_KEY in rows else None

    def _upgrade(self) -> bool:
        """Create the tables, or replace those of an older layout with empty
        ones at position 0; under the dialect's schema lock, so that of
        several processes opening at once one does it and the others find
        it done."""
        with self.dialect.transaction(write=True) as cursor:
            if self.dialect.schema_lock:
                cursor.execute(self.dialect.schema_lock)
            version = self._version(cursor)
            if version == SCHEMA_VERSION:
                return False
            replaced = version is not None
            if replaced:
                for table in VIEW_TABLES:
                    cursor.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in VIEW_SCHEMA:
                cursor.execute(statement)
            for key, value in ((POSITION_KEY, 0), (SCHEMA_KEY, SCHEMA_VERSION)):
                cursor.execute(
                    self._q(
                        "INSERT INTO ledger_view_position (name, position) "
                        "VALUES (?, ?) ON CONFLICT (name) "
                        "DO UPDATE SET position = excluded.position"
                    ),
                    (key, value),
                )
            return replaced

    def _q(self, statement: str) -> str:
        return self.dialect.sql(statement)

    def position(self) -> int:
        with self.dialect.transaction(write=False) as cursor:
            cursor.execute(
                self._q("SELECT position FROM ledger_view_position WHERE name = ?"),
                (POSITION_KEY,),
            )
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    def allocations(self, ids: Collection[UUID]) -> dict[UUID, AllocationView]:
        docs = self._documents("ledger_allocation_view", ids)
        return {key: allocation_from_dict(doc) for key, doc in docs.items()}

    def allocation_documents(self, ids: Collection[UUID]) -> dict[UUID, Any]:
        """The stored JSON documents of these allocations' rows, parsed (the
        dictionaries `allocation_to_dict` gave when they were written):
        what an audit compares, without making rows of them."""
        return self._documents("ledger_allocation_view", ids)

    def allocation_texts(self, ids: Collection[UUID]) -> dict[UUID, str]:
        """The stored JSON text of these allocations' rows, as written
        (`encode_document` of `allocation_to_dict`), not parsed: an audit
        encodes its own row the same way and compares the texts."""
        return self._texts("ledger_allocation_view", ids)

    def capacities(self, ids: Collection[UUID]) -> dict[UUID, CapacityView]:
        docs = self._documents("ledger_capacity_view", ids)
        return {key: capacity_from_dict(doc) for key, doc in docs.items()}

    def _documents(self, table: str, ids: Collection[UUID]) -> dict[UUID, Any]:
        """The JSON documents of these aggregates' rows in a read-model table."""
        texts = self._texts(table, ids)
        return {key: decode_document(text) for key, text in texts.items()}

    def _texts(self, table: str, ids: Collection[UUID]) -> dict[UUID, str]:
        """The JSON text of these aggregates' rows in a read-model table."""
        if not ids:
            return {}
        by_key = {i.hex: i for i in ids}
        keys = list(by_key)
        marks = ", ".join("?" for _ in keys)
        with self.dialect.transaction(write=False) as cursor:
            cursor.execute(
                self._q(
                    f"SELECT aggregate_id, doc FROM {table} "
                    f"WHERE aggregate_id IN ({marks})"
                ),
                keys,
            )
            rows = cursor.fetchall()
        # The caller's ids, not new UUIDs made from the stored keys.
        return {by_key.get(row[0]) or UUID(row[0]): row[1] for row in rows}

    def commit(
        self,
        *,
        expected: int,
        position: int,
        allocations: Sequence[AllocationView],
        capacities: Sequence[CapacityView],
    ) -> bool:
        return self._commit(
            expected, position, [allocation_row(v) for v in allocations], capacities
        )

    def commit_documents(
        self,
        *,
        expected: int,
        position: int,
        allocations: Sequence[ListingDocument],
        capacities: Sequence[CapacityView],
    ) -> bool:
        """`commit`, the allocations' rows given as their documents (what
        catch-up folds for this store: projections/listing_documents.py)."""
        return self._commit(
            expected, position, [listing_row(r) for r in allocations], capacities
        )

    def _commit(
        self,
        expected: int,
        position: int,
        allocation_rows: list[tuple[Any, ...]],
        capacities: Sequence[CapacityView],
    ) -> bool:
        """Write the rows (encoded before the write lock is taken) and the
        position, if the position is still `expected`."""
        capacity_rows = [capacity_row(c) for c in capacities]
        with self.dialect.transaction(write=True) as cursor:
            cursor.execute(
                self._q(
                    "SELECT position FROM ledger_view_position WHERE name = ?"
                    + self.dialect.lock_row
                ),
                (POSITION_KEY,),
            )
            row = cursor.fetchone()
            if int(row[0]) != expected:
                return False
            if allocation_rows:
                cursor.executemany(self._q(UPSERT_ALLOCATION), allocation_rows)
            if capacity_rows:
                cursor.executemany(self._q(UPSERT_CAPACITY), capacity_rows)
            cursor.execute(
                self._q("UPDATE ledger_view_position SET position = ? WHERE name = ?"),
                (position, POSITION_KEY),
            )
        return True

    def get_allocation(self, allocation_id: str) -> AllocationView | None:
        found = self.allocations([allocation_uuid(allocation_id)])
        return next(iter(found.values()), None)

    def list_allocations(self, query: ListingQuery) -> list[AllocationView]:
        clauses = ["sequence > ?"]
        params: list[Any] = [query.after]
        for column, value in (
            ("state", query.state),
            ("job_id", query.job_id),
            ("priority", query.priority),
            ("pool", query.pool),
            ("tenant", query.tenant),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(str(value))
        params.append(query.limit)
        statement = (
            "SELECT doc FROM ledger_allocation_view WHERE "
            + " AND ".join(clauses)
            + " ORDER BY sequence LIMIT ?"
        )
        with self.dialect.transaction(write=False) as cursor:
            cursor.execute(self._q(statement), params)
            rows = cursor.fetchall()
        return [allocation_from_dict(decode_document(row[0])) for row in rows]

    def due_allocations(self, now: datetime, limit: int) -> list[AllocationView]:
        with self.dialect.transaction(write=False) as cursor:
            cursor.execute(
                self._q(
                    "SELECT doc FROM ledger_allocation_view "
                    "WHERE expires_at IS NOT NULL AND expires_at <= ? "
                    "ORDER BY expires_at, allocation_id LIMIT ?"
                ),
                (now.timestamp(), limit),
            )
            rows = cursor.fetchall()
        return [allocation_from_dict(decode_document(row[0])) for row in rows]

    def count_unfinished(self) -> dict[tuple[str, str], int]:
        """Counted over the (state, sequence) index: the rows of terminal
        allocations, which only ever grow, are never read."""
        marks = ", ".join("?" for _ in UNFINISHED_STATES)
        with self.dialect.transaction(write=False) as cursor:
            cursor.execute(
                self._q(
                    "SELECT pool, state, COUNT(*) FROM ledger_allocation_view "
                    f"WHERE state IN ({marks}) GROUP BY pool, state"
                ),
                [state.value for state in UNFINISHED_STATES],
            )
            rows = cursor.fetchall()
        return {(str(pool), str(state)): int(count) for pool, state, count in rows}

    def get_capacity(self, pool: str) -> CapacityView | None:
        found = self.capacities([pool_uuid(pool)])
        return next(iter(found.values()), None)

    def list_capacities(self) -> list[CapacityView]:
        with self.dialect.transaction(write=False) as cursor:
            cursor.execute("SELECT doc FROM ledger_capacity_view ORDER BY pool")
            rows = cursor.fetchall()
        return [capacity_from_dict(decode_document(row[0])) for row in rows]

    def usage(self, query: UsageQuery, now: datetime) -> list[UsageRow]:
        """Summed in the database over indexed columns: no documents decoded.

        The span billed is the one `projections.usage.reserved_span` gives:
        from `reserved_at` (rows that never held capacity have none) to
        `ended_at`, or for a live row to now or its lease's end if sooner.
        """
        least, greatest = self.dialect.least, self.dialect.greatest
        since = max(query.since.timestamp() if query.since else -1e18, -1e18)
        until = query.until.timestamp() if query.until else now.timestamp()
        end = f"{least}(COALESCE(ended_at, expires_at, ?), ?, ?)"
        start = f"{greatest}(reserved_at, ?)"
        held = f"{greatest}(0, {end} - {start})"
        filters, params = self._usage_filters(query)
        statement = (
            "SELECT job_id, pool, "
            f"SUM(cpu_millicores * {held}), SUM(memory_mib * {held}), "
            f"SUM(workers * {held}), SUM(server_count * {held}) "
            "FROM ledger_allocation_view "
            "WHERE reserved_at IS NOT NULL AND reserved_at < ? "
            f"AND {end} > {start}"  # held some time in the window
            + filters
            + " GROUP BY job_id, pool"
        )
        window = (now.timestamp(), now.timestamp(), until, since)
        held_params = [*window, *window, *window, *window, until, *window]
        counts = (
            "SELECT job_id, pool, state, COUNT(*) FROM ledger_allocation_view "
            "WHERE started_at >= ? AND started_at < ?"
            + filters
            + " GROUP BY job_id, pool, state"
        )
        rows: dict[tuple[str, str], UsageRow] = {}
        with self.dialect.transaction(write=False) as cursor:
            cursor.execute(self._q(statement), [*held_params, *params])
            for job_id, pool, cpu, memory, workers, servers in cursor.fetchall():
                row = rows.setdefault((job_id, pool), UsageRow(job_id, pool))
                row.cpu_core_seconds = float(cpu or 0) / MILLICORES_PER_CORE
                row.memory_mb_seconds = float(memory or 0)
                row.worker_seconds = float(workers or 0)
                row.mcp_server_seconds = float(servers or 0)
            cursor.execute(self._q(counts), [since, until, *params])
            for job_id, pool, state, count in cursor.fetchall():
                row = rows.setdefault((job_id, pool), UsageRow(job_id, pool))
                row.allocations[state] = int(count)
        return [rows[key] for key in sorted(rows)]

    @staticmethod
    def _usage_filters(query: UsageQuery) -> tuple[str, list[Any]]:
        clauses = ""
        params: list[Any] = []
        if query.job_id is not None:
            clauses += " AND job_id = ?"
            params.append(query.job_id)
        if query.pool is not None:
            clauses += " AND pool = ?"
            params.append(query.pool)
        if query.tenant is not None:
            clauses += " AND tenant = ?"
            params.append(query.tenant)
        return clauses, params

    def clear(self) -> None:
        with self.dialect.transaction(write=True) as cursor:
            cursor.execute("DELETE FROM ledger_allocation_view")
            cursor.execute("DELETE FROM ledger_capacity_view")
            cursor.execute(
                self._q("UPDATE ledger_view_position SET position = 0 WHERE name = ?"),
                (POSITION_KEY,),
            )
