"""Accounting: what each job held, for how long, per pool.

Usage accrues only while an allocation holds capacity: from the moment its
capacity is reserved (at the request when it fits at once, at the grant when
it waited in the queue) to the moment it is given back (release, preemption,
failure, or its lease's end for an expired one); a live one accrues until the
moment of the query, or its lease's end if sooner. Time in the queue is never
billed, and a request rejected, timed out or cancelled in the queue is
billed 0. Every read-model store answers with these rules (the SQL one sums
the same span in the database).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from allocation_ledger.domain.values import MILLICORES_PER_CORE, AllocationState
from allocation_ledger.projections.views import AllocationView


@dataclass(frozen=True)
class UsageQuery:
    """Whose usage, over which window. `tenant`: only that tenant's
    allocations (None: every tenant's)."""

    job_id: str | None = None
    pool: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    tenant: str | None = None

    def billed_until(self, now: datetime) -> datetime:
        """Where the billed period ends: `until`, but never after `now`
        (nothing is billed past now: a live allocation counts up to now), so
        an answer never claims a future it did not count."""
        return now if self.until is None else min(self.until, now)


@dataclass
class UsageRow:
    """Usage of one job in one pool over the query's window."""

    job_id: str
    pool: str
    cpu_core_seconds: float = 0.0
    memory_mb_seconds: float = 0.0
    worker_seconds: float = 0.0
    mcp_server_seconds: float = 0.0
    allocations: dict[str, int] = field(default_factory=dict)

    def add_held(
        self,
        seconds: float,
        cpu_millicores: int,
        memory_mib: int,
        workers: int,
        servers: int,
    ) -> None:
        self.cpu_core_seconds += cpu_millicores * seconds / MILLICORES_PER_CORE
        self.memory_mb_seconds += memory_mib * seconds
        self.worker_seconds += workers * seconds
        self.mcp_server_seconds += servers * seconds

    def as_dict(self) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "pool": self.pool,
            "cpu_core_seconds": round(self.cpu_core_seconds, 3),
            "memory_mb_seconds": round(self.memory_mb_seconds, 3),
            "worker_seconds": round(self.worker_seconds, 3),
            "mcp_server_seconds": round(self.mcp_server_seconds, 3),
            "allocations": dict(sorted(self.allocations.items())),
        }


def held_until(view: AllocationView, now: datetime) -> datetime:
    """When the allocation stopped holding capacity, as far as accounting goes.

    An expired allocation is charged up to its lease's end, not up to the
    sweep that noticed; a live one up to now, or its lease's end if sooner.
    """
    return held_until_from(view.state, view.expires_at, view.ended_at, now)


_EXPIRED = AllocationState.EXPIRED.value


def held_until_from(
    state: str, expires_at: datetime | None, ended_at: datetime | None, now: datetime
) -> datetime:
    """`held_until` of a row given as its state (an AllocationState value),
    lease end and end: for rows kept as documents, not views."""
    if state == _EXPIRED and expires_at is not None:
        return expires_at
    if ended_at is not None:
        return ended_at
    if expires_at is not None:
        return min(now, expires_at)
    return now


def reserved_span(
    view: AllocationView, now: datetime
) -> tuple[datetime, datetime] | None:
    """When the allocation held capacity, as accounting counts it: from its
    reservation to when it gave the capacity back (or now); None if it never
    held any."""
    if view.reserved_at is None:
        return None
    return view.reserved_at, held_until(view, now)


def overlap_seconds(
    start: datetime,
    end: datetime | None,
    query: UsageQuery,
    now: datetime,
) -> float:
    """Seconds of [start, end or now] that fall inside the query's window."""
    finish = end or now
    if query.until is not None:
        finish = min(finish, query.until)
    begin = start if query.since is None else max(start, query.since)
    return max((finish - begin).total_seconds(), 0.0)


def in_window(moment: datetime, query: UsageQuery) -> bool:
    return (query.since is None or moment >= query.since) and (
        query.until is None or moment < query.until
    )


def usage_of(
    views: Iterable[AllocationView], query: UsageQuery, now: datetime
) -> list[UsageRow]:
    """Sum usage per (job, pool) over allocation rows."""
    rows: dict[tuple[str, str], UsageRow] = {}
    for view in views:
        if query.job_id is not None and view.job_id != query.job_id:
            continue
        if query.pool is not None and view.pool != query.pool:
            continue
        if query.tenant is not None and view.tenant != query.tenant:
            continue
        span = reserved_span(view, now)
        seconds = 0.0 if span is None else overlap_seconds(*span, query, now)
        counted = in_window(view.created_at, query)
        if seconds <= 0 and not counted:
            continue
        row = rows.setdefault(
            (view.job_id, view.pool), UsageRow(view.job_id, view.pool)
        )
        row.add_held(
            seconds,
            view.resources.cpu_millicores,
            view.resources.memory_mib,
            view.resources.workers,
            len(view.servers_requested),
        )
        if counted:
            row.allocations[view.state] = row.allocations.get(view.state, 0) + 1
    return [rows[key] for key in sorted(rows)]
