"""The read-model tables' layout, and read-model rows as table rows.

What `SQLReadModels` (sql_read_models.py) writes and reads: the columns of
each table, and the conversion of a row to them. An allocation's row is a
few indexed columns (what listings, expiry and usage filter and sum on) and
its whole listing row as a JSON document (`projections.codec`); a pool's
row is its capacity view as a document.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson

from allocation_ledger.domain.allocation_ids import allocation_uuid_hex
from allocation_ledger.domain.pool import pool_uuid
from allocation_ledger.domain.values import LIVE_STATES, TERMINAL_STATES
from allocation_ledger.projections.codec import allocation_to_dict, capacity_to_dict
from allocation_ledger.projections.listing_documents import (
    ListingDocument,
    stored_document,
)
from allocation_ledger.projections.usage import held_until, held_until_from
from allocation_ledger.projections.views import AllocationView, CapacityView

SCHEMA_VERSION = 4
"""The layout of the read-model tables. 1 (no version row): before
`reserved_at`. 2: `reserved_at`, the moment capacity was reserved, which usage
counts from. 3: `tenant`, indexed, which a tenant's listing and usage filter
on. 4: each pool's port ranges (`ports`) in its capacity document. Raise it
whenever the tables or their documents change shape."""

_LIVE = frozenset(s.value for s in LIVE_STATES)
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)
VIEW_TABLES = ("ledger_allocation_view", "ledger_capacity_view")

VIEW_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ledger_allocation_view (
        aggregate_id TEXT PRIMARY KEY,
        allocation_id TEXT NOT NULL,
        sequence BIGINT NOT NULL,
        pool TEXT NOT NULL,
        job_id TEXT NOT NULL,
        state TEXT NOT NULL,
        priority TEXT NOT NULL,
        expires_at DOUBLE PRECISION,
        started_at DOUBLE PRECISION NOT NULL,
        reserved_at DOUBLE PRECISION,
        ended_at DOUBLE PRECISION,
        cpu_millicores BIGINT NOT NULL,
        memory_mib BIGINT NOT NULL,
        workers INTEGER NOT NULL,
        server_count INTEGER NOT NULL,
        tenant TEXT,
        doc TEXT NOT NULL
    )""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_started
        ON ledger_allocation_view (started_at)""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_reserved
        ON ledger_allocation_view (reserved_at)
        WHERE reserved_at IS NOT NULL""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_sequence
        ON ledger_allocation_view (sequence)""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_state
        ON ledger_allocation_view (state, sequence)""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_job
        ON ledger_allocation_view (job_id, sequence)""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_tenant
        ON ledger_allocation_view (tenant, sequence)""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_tenant_reserved
        ON ledger_allocation_view (tenant, reserved_at)""",
    """CREATE INDEX IF NOT EXISTS ledger_allocation_view_due
        ON ledger_allocation_view (expires_at, allocation_id)
        WHERE expires_at IS NOT NULL""",
    """CREATE TABLE IF NOT EXISTS ledger_capacity_view (
        aggregate_id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        doc TEXT NOT NULL
    )""",
)

UPSERT_ALLOCATION = """INSERT INTO ledger_allocation_view
    (aggregate_id, allocation_id, sequence, pool, job_id, state, priority,
     expires_at, started_at, reserved_at, ended_at, cpu_millicores, memory_mib,
     workers, server_count, tenant, doc)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (aggregate_id) DO UPDATE SET
        state = excluded.state,
        expires_at = excluded.expires_at,
        reserved_at = excluded.reserved_at,
        ended_at = excluded.ended_at,
        doc = excluded.doc"""

UPSERT_CAPACITY = """INSERT INTO ledger_capacity_view (aggregate_id, pool, doc)
    VALUES (?, ?, ?)
    ON CONFLICT (aggregate_id) DO UPDATE SET doc = excluded.doc"""


# json.dumps with separators builds a new encoder on every call; this is the same.
_json_encode = json.JSONEncoder(separators=(",", ":")).encode


def encode_document(document: dict[str, Any]) -> str:
    """A row's document as JSON text: orjson's, several times faster than the
    standard library's; the standard library's for what orjson refuses
    (keys that are not strings, integers over 64 bits)."""
    try:
        return orjson.dumps(document).decode()
    except TypeError:
        return _json_encode(document)


def decode_document(text: str | bytes) -> Any:
    """A stored document, parsed: by orjson, or by the standard library for
    what orjson refuses (say, an unpaired surrogate escaped in a string)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _epoch(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def allocation_row(view: AllocationView) -> tuple[Any, ...]:
    """The row of an allocation (the columns of UPSERT_ALLOCATION, in order).
    `started_at`: its request (what the counts of allocations requested in
    a period go by); `reserved_at` to `ended_at`: the span usage bills
    (`ended_at` empty until it is over)."""
    live = view.state in _LIVE
    ended = view.state in _TERMINAL
    return (
        allocation_uuid_hex(view.allocation_id),
        view.allocation_id,
        view.sequence,
        view.pool,
        view.job_id,
        view.state,
        view.priority,
        _epoch(view.expires_at) if live else None,
        view.created_at.timestamp(),
        _epoch(view.reserved_at),
        _epoch(held_until(view, view.updated_at)) if ended else None,
        view.resources.cpu_millicores,
        view.resources.memory_mib,
        view.resources.workers,
        len(view.servers_requested),
        view.tenant,
        encode_document(allocation_to_dict(view)),
    )


def listing_row(row: ListingDocument) -> tuple[Any, ...]:
    """`allocation_row` of the view whose document this is, the same values
    (projections/listing_documents.py), computed from the document."""
    state = row["state"]
    expires_at = row["expires_at"]
    resources = row["resources"]
    allocation_id = row["allocation_id"]
    return (
        allocation_uuid_hex(allocation_id),
        allocation_id,
        row["sequence"],
        row["pool"],
        row["job_id"],
        state,
        row["priority"],
        _epoch(expires_at) if state in _LIVE else None,
        row["created_at"].timestamp(),
        _epoch(row["reserved_at"]),
        (
            held_until_from(
                state, expires_at, row["ended_at"], row["updated_at"]
            ).timestamp()
            if state in _TERMINAL
            else None
        ),
        resources["cpu_millicores"],
        resources["memory_mib"],
        resources["workers"],
        len(row["servers_requested"]),
        row["tenant"],
        encode_document(stored_document(row)),
    )


def capacity_row(view: CapacityView) -> tuple[str, str, str]:
    """The row of a pool (the columns of UPSERT_CAPACITY, in order)."""
    return (
        pool_uuid(view.pool).hex,
        view.pool,
        encode_document(capacity_to_dict(view)),
    )
