"""What the operator asks of the history: replays, checks, exports, accounting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from allocation_ledger.adapters.storage.row_comparison import RowComparison
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid, is_allocation_id
from allocation_ledger.domain.errors import AllocationNotFoundError, PoolNotFoundError
from allocation_ledger.domain.pool import DEFAULT_POOL, Pool
from allocation_ledger.domain.server_process import server_process_uuid
from allocation_ledger.domain.values import LIVE_STATES
from allocation_ledger.projections.catchup import Progress, collector_paused
from allocation_ledger.projections.codec import capacity_to_dict
from allocation_ledger.projections.history import (
    HistoryEntry,
    describe,
    describe_record,
)
from allocation_ledger.projections.replay import logged_batches, logged_events, replay
from allocation_ledger.projections.usage import UsageQuery, UsageRow
from allocation_ledger.projections.verify import (
    DEFAULT_TIME_TOLERANCE,
    InvariantChecker,
    Violation,
)
from allocation_ledger.projections.views import AllocationView, CapacityView


def allocation_history(
    service: AllocationService, allocation_id: str
) -> list[HistoryEntry]:
    """Every event of one allocation, in order."""
    if not is_allocation_id(allocation_id):
        raise AllocationNotFoundError(allocation_id)
    events = list(
        service.ledger.repository.event_store.get(allocation_uuid(allocation_id))
    )
    if not events:
        raise AllocationNotFoundError(allocation_id)
    return [describe(event) for event in events]


def server_process_history(
    service: AllocationService, pool: str, name: str
) -> list[HistoryEntry]:
    """Every event of the processes of MCP server `name` in `pool`, in order
    (starts, health checks, exits, restarts, stops); empty when none ran."""
    events = service.ledger.repository.event_store.get(server_process_uuid(pool, name))
    return [describe(event) for event in events]


@dataclass(frozen=True)
class CapacityAt:
    """A pool as it was at a moment: totals, reservations and MCP servers."""

    at: datetime
    position: int
    capacity: CapacityView
    live: list[AllocationView]


LIVE_VALUES = frozenset(state.value for state in LIVE_STATES)


def capacity_at(
    service: AllocationService,
    at: datetime,
    pool: str = DEFAULT_POOL,
    progress: Progress | None = None,
) -> CapacityAt:
    """Replay the log up to `at` with the live folds and read the pool.

    Streams: ended allocations are forgotten as the replay goes, so memory
    holds the pools and the allocations unfinished at each moment only.
    Raises PoolNotFoundError when the pool did not exist at `at`.
    """
    replayed = replay(
        service.projector.log,
        service.projector.decode,
        until_time=at,
        progress=progress,
        live_only=True,
    )
    capacity = replayed.models.get_capacity(pool)
    if capacity is None:
        raise PoolNotFoundError(pool, at)
    live = [
        view
        for view in replayed.models.all_allocations()
        if view.pool == pool and view.state in LIVE_VALUES
    ]
    return CapacityAt(at, replayed.position, capacity, live)


@dataclass
class VerifyReport:
    """What `verify` found: how much it checked, and any broken invariant or
    read model that differs from the replay."""

    events: int = 0
    allocations: int = 0
    pools: int = 0
    seconds: float = 0.0
    position: int = 0
    violation: Violation | None = None
    mismatches: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.violation is None and not self.mismatches

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "events": self.events,
            "allocations": self.allocations,
            "pools": self.pools,
            "seconds": round(self.seconds, 3),
            "position": self.position,
            "violation": None
            if self.violation is None
            else {
                "position": self.violation.position,
                "event": self.violation.event,
                "invariant": self.violation.invariant,
                "message": self.violation.message,
            },
            "mismatches": self.mismatches,
        }


def verify(
    service: AllocationService,
    progress: Progress | None = None,
    *,
    time_tolerance: timedelta = DEFAULT_TIME_TOLERANCE,
) -> VerifyReport:
    """Replay everything, checking every invariant after every event, and
    compare the result with the persisted read models and the Pool aggregates.

    It streams: each allocation is compared with its stored row once it has
    ended, then forgotten, so memory holds the live allocations only, however
    long the history. `time_tolerance`: how much earlier than the latest event
    before it an event of another aggregate may be (see projections/verify.py).
    """
    started = time.perf_counter()
    end = service.projector.catch_up()
    comparison = RowComparison(service.store)
    checker = InvariantChecker(
        time_tolerance=time_tolerance,
        settled=comparison.add,
        lookup=service.store,
    )
    pools: dict[UUID, Pool | None] = {}  # None: not foldable here
    decode = service.projector.decode
    feed = checker.feed
    pool_event = Pool.Event
    with collector_paused():
        for notifications in logged_batches(
            service.projector.log, until=end, progress=progress
        ):
            for notification in notifications:
                event = decode(notification)
                feed(notification.id, event)
                if checker.violation is not None:
                    break
                if isinstance(event, pool_event):
                    _fold_pool(pools, event)
            if checker.violation is not None:
                break
        violation = checker.finish()
    report = VerifyReport(
        events=checker.events,
        allocations=checker.allocations,
        pools=len(checker.batch.capacities),
        position=end,
        violation=violation,
    )
    if violation is None:
        for key, view in checker.batch.allocations.items():
            comparison.add(key, view)
        report.mismatches = comparison.finish() + _compare_pools(
            service, checker, pools
        )
    report.seconds = time.perf_counter() - started
    return report


_UNSEEN: Any = object()  # a pool not met yet in the log


def _fold_pool(pools: dict[UUID, Pool | None], event: Pool.Event) -> None:
    """Apply a pool's event to the pool as its events make it. A pool whose
    events its own code refuses is left to the ledger's read at the end,
    which reports that in its own words."""
    key = event.originator_id
    pool = pools.get(key, _UNSEEN)
    if pool is None:
        return
    try:
        mutated = event.mutate(None if pool is _UNSEEN else pool)
    except Exception:  # noqa: BLE001 - any refusal: the ledger's read says it
        mutated = None
    if mutated is not pool:  # a new pool, or a refusal (the same one: no change)
        pools[key] = mutated if isinstance(mutated, Pool) else None


def _compare_pools(
    service: AllocationService,
    checker: InvariantChecker,
    replayed: dict[UUID, Pool | None],
) -> list[str]:
    """The replayed capacity rows against the stored ones and the aggregates.

    `replayed`: each pool aggregate as its events, read in the same pass,
    make it. When the pool has a snapshot the ledger's own read of it (from
    that snapshot) is compared instead: that is the state the ledger decides
    on. Without one, the ledger's read would fold the same events again.
    """
    mismatches: list[str] = []
    store = service.store
    for key, capacity in checker.batch.capacities.items():
        stored_capacity = store.get_capacity(capacity.pool)
        if stored_capacity is None or capacity_to_dict(
            stored_capacity
        ) != capacity_to_dict(capacity):
            mismatches.append(
                f"capacity of pool {capacity.pool!r} differs in read model"
            )
        pool = replayed.get(key)
        if pool is None or _has_snapshot(service, key):
            pool = service.ledger.pool(capacity.pool)
        mismatches.extend(_compare_pool(pool, capacity))
    return mismatches


def _has_snapshot(service: AllocationService, key: UUID) -> bool:
    snapshots = service.ledger.snapshots
    if snapshots is None:
        return False
    return any(True for _ in snapshots.get(key, desc=True, limit=1))


def _compare_pool(pool: Pool, capacity: CapacityView) -> list[str]:
    found: list[str] = []
    if pool.reserved != capacity.reserved:
        found.append(
            f"pool {pool.name!r} aggregate reserves {pool.reserved}, "
            f"replay gives {capacity.reserved}"
        )
    if pool.settings.capacity != capacity.total:
        found.append(f"pool {pool.name!r} aggregate capacity differs from replay")
    if pool.ports != capacity.ports:
        found.append(
            f"pool {pool.name!r} aggregate port ranges {pool.ports} differ from "
            f"replay {capacity.ports}"
        )
    servers = {s.name: (s.port, s.references, s.cost) for s in pool.servers.values()}
    replayed = {
        s.name: (s.port, s.references, s.cost) for s in capacity.servers.values()
    }
    if servers != replayed:
        found.append(
            f"pool {pool.name!r} aggregate servers {servers} differ from "
            f"replay {replayed}"
        )
    if len(pool.reservations) != capacity.live_allocations:
        found.append(
            f"pool {pool.name!r} aggregate has {len(pool.reservations)} "
            f"reservations, replay {capacity.live_allocations}"
        )
    return found


EXPORT_NAMES = 10_000
"""How many aggregates' public names `export` keeps at once: an allocation's
events lie close together in the log, so a small cache, emptied when full,
finds nearly every name without a query and does not grow with history."""


def export_events(
    service: AllocationService, since: int = 0, progress: Progress | None = None
) -> Iterator[dict[str, Any]]:
    """The log as JSON-ready records, after position `since`.

    Each record names its aggregate by UUID and, for allocations and pools,
    by its public id or name (`allocation_id` / `pool`) as well: taken from
    the request or creation event as it passes, else read from the read
    models. Streams: memory does not grow with the history.
    """
    names: dict[Any, str] = {}
    ids: dict[UUID, str] = {}  # aggregate ids as text (str of a UUID is slow)
    service.read_models.catch_up()
    with collector_paused():
        for position, event in logged_events(
            service.projector.log,
            service.projector.decode,
            after=since,
            progress=progress,
        ):
            uuid = getattr(event, "originator_id", None)
            text = None
            if type(uuid) is UUID:
                text = ids.get(uuid)
                if text is None:
                    if len(ids) >= EXPORT_NAMES:
                        ids.clear()
                    text = ids[uuid] = str(uuid)
            record = describe_record(event, position, text)
            key = record["aggregate"]
            if key in ("allocation", "pool"):
                record["name"] = _public_name(service, names, event, key)
            yield record


def _public_name(
    service: AllocationService, names: dict[Any, str], event: Any, kind: str
) -> str:
    """The allocation id or pool name of an event's aggregate."""
    uuid = event.originator_id
    found = names.get(uuid)
    if found is not None:
        return found
    if len(names) >= EXPORT_NAMES:
        names.clear()
    if isinstance(event, Allocation.Requested):
        found = event.allocation_id
    elif isinstance(event, Pool.Created):
        found = event.name
    elif kind == "allocation":
        view = service.store.allocations([uuid]).get(uuid)
        found = view.allocation_id if view else ""
    else:
        capacity = service.store.capacities([uuid]).get(uuid)
        found = capacity.pool if capacity else ""
    names[uuid] = found
    return found


def require_pool(service: AllocationService, pool: str) -> None:
    """Raise PoolNotFoundError unless `pool` exists (`default` always does)."""
    if service.read_models.capacity(pool) is None:
        raise PoolNotFoundError(pool)


def usage(
    service: AllocationService, query: UsageQuery, now: datetime | None = None
) -> list[UsageRow]:
    """What each job held in each pool over the query's period, up to `now`.

    Raises PoolNotFoundError when the query names a pool that does not exist.
    """
    if query.pool is not None:
        require_pool(service, query.pool)
    service.read_models.catch_up()
    return service.store.usage(query, now or service.ledger.clock.now())
