"""A pool's queue: its order, who may pass it, whom to grant, who timed out,
who can never be granted.

Pure functions over a pool's state (`PoolState`); the rules are those of
docs/scheduling.md ("The queue"): requests are served by effective priority
(their own, aged one level per `aging_seconds` waited, up to critical), then
arrival. Under `strict` nobody passes the head; under `backfill` the first
request in queue order that fits is granted.
"""

from __future__ import annotations

from datetime import datetime

from allocation_ledger.domain.capacity import (
    never_fits,
    quota_never_fits,
    quota_shortfall,
    room_for,
    shortfall,
    starting_costs,
)
from allocation_ledger.domain.pool_state import PoolState, QueueEntry
from allocation_ledger.domain.ports import free_mcp_ports
from allocation_ledger.domain.scheduling import queue_rank
from allocation_ledger.domain.values import (
    QUEUED_AHEAD,
    AllocationRequest,
    Dimension,
    Priority,
    QueuePolicy,
    Rejection,
    Resources,
)


def effective_rank(pool: PoolState, entry: QueueEntry, now: datetime) -> int:
    """A queued request's priority rank plus one per aging period waited,
    up to critical (`scheduling.queue_rank`)."""
    return queue_rank(
        entry.request.priority,
        entry.enqueued_at,
        now,
        pool.scheduling.aging_seconds,
    )


def queue_order(pool: PoolState, now: datetime) -> list[QueueEntry]:
    """The queue as it will be served: effective priority, then arrival."""
    return sorted(
        pool.queue.values(),
        key=lambda e: (-effective_rank(pool, e, now), e.arrival),
    )


def blocked_by(pool: PoolState, entry: QueueEntry) -> Rejection | None:
    """What keeps a queued request from being granted now: the pool's
    shortfall, else its tenant's quota; None when it could be granted."""
    needed = pool.settings.workers_for(entry.request)
    return shortfall(pool, entry.request, needed) or quota_shortfall(
        pool, entry.tenant, needed
    )


def waiting_ahead(
    pool: PoolState, request: AllocationRequest, needed: Resources, now: datetime
) -> Rejection | None:
    """Under the strict policy a newcomer may not pass a waiting request that
    comes before it (effective rank at least the newcomer's priority): why it
    must wait, or None when it may go ahead.

    The answer (code `queued_ahead`) names the dimension the head of the
    queue waits for (workers if the head could be granted) with what the
    newcomer needs of it (`needed`, its workers, plus the costs of the
    servers it would start; or its MCP server count) and what it could have
    (`capacity.room_for`; free MCP ports for that dimension).
    """
    if pool.scheduling.queue_policy is not QueuePolicy.STRICT or not pool.queue:
        return None
    if takes_nothing(pool, request, needed):
        return None
    head = queue_order(pool, now)[0]
    if effective_rank(pool, head, now) < request.priority.rank:
        return None
    blocking = blocked_by(pool, head)
    dimension = blocking.dimension if blocking else Dimension.WORKERS
    available = (
        free_mcp_ports(pool.ports, (s.port for s in pool.servers.values()))
        if dimension is Dimension.MCP_PORTS
        else room_for(pool, request).amount(dimension)
    )
    requested = (
        len(request.servers)
        if dimension is Dimension.MCP_PORTS
        else (needed + starting_costs(pool, request)).amount(dimension)
    )
    return Rejection(QUEUED_AHEAD, dimension, requested, max(available, 0))


def takes_nothing(
    pool: PoolState, request: AllocationRequest, needed: Resources
) -> bool:
    """Whether granting `request` takes nothing from the pool: no workers
    (`needed` is zero) and only MCP servers that already have an instance
    holding its cost (shared, no port or cost of a new start). Such a request
    cannot delay anyone queued, so the strict policy lets it pass: refusing
    it as `queued_ahead` read "requested 0, available 0 after them"."""
    return (
        needed == Resources()
        and starting_costs(pool, request) == Resources()
        and all(name in pool.servers for name in request.servers)
    )


def next_to_grant(
    pool: PoolState, now: datetime, *, ahead_of: Priority | None = None
) -> QueueEntry | None:
    """The queued request to grant now, if any: the head if it fits
    (strict), or the first that fits (backfill). Fitting includes the
    tenant's quota.

    `ahead_of`: the priority of a newcomer being admitted; only requests
    that come before it in the one ranking of queue and newcomer are
    considered (effective priority at least its own: a tie goes to the
    earlier arrival, the queued one). The rest come after it.
    """
    for entry in queue_order(pool, now):
        if ahead_of is not None and effective_rank(pool, entry, now) < ahead_of.rank:
            return None
        if blocked_by(pool, entry) is None:
            return entry
        if pool.scheduling.queue_policy is QueuePolicy.STRICT:
            return None
    return None


def never_granted(pool: PoolState) -> list[tuple[QueueEntry, Rejection]]:
    """Queued requests that can never be granted in the pool as it is now,
    with why, in arrival order: those bigger than the pool's total in some
    dimension (`exceeds_pool`) and those over their tenant's quota even if
    it held nothing (`quota_exceeded`). A request short only of what is free
    now, or of what its tenant's quota has left now, is not one of them: it
    waits for leases to end (invariant 10)."""
    found: list[tuple[QueueEntry, Rejection]] = []
    for entry in sorted(pool.queue.values(), key=lambda e: e.arrival):
        settings = pool.settings
        never = never_fits(
            pool,
            settings.in_empty_pool(entry.request),
            servers=len(entry.request.servers),
        ) or quota_never_fits(pool, entry.tenant, settings.workers_for(entry.request))
        if never is not None:
            found.append((entry, never))
    return found


def timed_out(pool: PoolState, now: datetime) -> list[QueueEntry]:
    """Queued requests whose maximum wait has passed, in arrival order."""
    late = [
        e for e in pool.queue.values() if e.deadline is not None and e.deadline <= now
    ]
    return sorted(late, key=lambda e: e.arrival)
