"""Scheduling and accounting properties, checked over a real ledger's history.

The state machines call `LedgerProperties.check` after every step. Everything
is computed here from the ledger's stored events, its Pool aggregates' plain
data and its read models, never with the domain's own scheduling or
accounting functions:

- event times never decrease, per aggregate and over the whole log (one
  process writes, so notification order is time order; invariant 8);
- nothing is granted (or activated) and preempted in one decision: no
  allocation has both a grant (a `Requested` that held capacity, `Granted`,
  `Activated`) and a `Preempted` among the events one step wrote (one step is
  one command, and one command decides at one instant; an allocation granted
  by one command and preempted by a later one at the same clock reading is
  two decisions, and allowed; invariant 10);
- no queued request is one that can never be granted: it needs more of some
  dimension than the pool's total, or than its tenant's quota (invariant 10);
  and the queued rows of the listing are exactly the pool's queue;
- each allocation's billed usage equals its reserved time computed from its
  own events: from the `Requested` that held capacity (one not followed by
  `Queued` or `Rejected`) or the `Granted`, to the `Released`, `Preempted`,
  `Failed` or `Rejected` that gave it back, or the lease's end recorded on
  `Expired` (accounting bills an expired lease to its end, not to the sweep);
  a live one to now or its lease's end if sooner (invariant 9). Checked per
  allocation on its read-model row (`reserved_span`) and per job and pool
  through the `usage` query;
- what a pool reserves is its live reservations' workers plus one cost per
  running MCP server instance (idle too): each `Reserved` holds exactly its
  workers at the pool's worker size then, each `ServerStarted` records the
  server's cost in the pool's settings then, a `ServerStopped` gives back
  what its instance held, and the Pool aggregate's reserved amount is the
  sum (invariant 1).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.values import AllocationState, Resources
from allocation_ledger.projections.store import ListingQuery, ReadModelStore
from allocation_ledger.projections.usage import UsageQuery, reserved_span

HOLDS = frozenset({"Granted", "Activated"})
GIVES_BACK = frozenset({"Released", "Preempted", "Failed", "Rejected"})
ENDS = GIVES_BACK | {"Expired"}
NOT_HELD_AFTER_REQUEST = frozenset({"Queued", "Rejected"})
DIMENSIONS = ("cpu_millicores", "memory_mib", "workers")
TOLERANCE = 1e-6


@dataclass
class Held:
    """What one allocation's own events say it held, and for how long."""

    job_id: str
    pool: str
    resources: dict[str, int]
    servers: int
    seconds: float


class LedgerProperties:
    """Reads the log incrementally; `check(now)` after every step."""

    def __init__(
        self,
        ledger: Ledger,
        store: ReadModelStore,
        pools: Callable[[], Iterable[Pool]],
    ) -> None:
        """`pools`: the Pool aggregates as stored, read without side effects."""
        self.ledger = ledger
        self.store = store
        self.pools = pools
        self.read_up_to = 0
        self.last_time: datetime | None = None
        self.last_by_aggregate: dict[UUID, datetime] = {}
        self.histories: dict[str, list[Any]] = defaultdict(list)
        self._ids: dict[UUID, str] = {}
        self.settled: dict[str, Held] = {}
        """Ended allocations already checked: their bill no longer changes."""
        self.counts: dict[str, int] = defaultdict(int)
        """How often each property met its interesting case (for statistics)."""
        self._sizes: dict[UUID, dict[str, int]] = {}
        self._costs: dict[UUID, dict[str, dict[str, int]]] = {}
        self._instances: dict[UUID, dict[str, dict[str, int] | None]] = {}
        self._reserved: dict[UUID, dict[str, int]] = {}

    def check(self, now: datetime) -> None:
        written = self._read_new_events()
        self._check_times(written)
        self._check_reserved(written)
        self._check_not_granted_and_preempted(written)
        self._check_nothing_hopeless_queued()
        self._check_usage(now)

    # -- the log ---------------------------------------------------------------

    def _read_new_events(self) -> list[Any]:
        events: list[Any] = []
        while True:
            page = self.ledger.recorder.select_notifications(
                start=self.read_up_to + 1, limit=500
            )
            for notification in page:
                events.append(self.ledger.mapper.to_domain_event(notification))
                self.read_up_to = notification.id
            if len(page) < 500:
                return events

    def _check_times(self, written: list[Any]) -> None:
        """Invariant 8: per aggregate and over the whole log."""
        for event in written:
            at: datetime = event.timestamp
            if self.last_time is not None:
                assert at >= self.last_time, (
                    f"{type(event).__name__} of {event.originator_id} at {at}, "
                    f"after an event at {self.last_time}"
                )
            previous = self.last_by_aggregate.get(event.originator_id)
            if previous is not None:
                assert at >= previous, (
                    f"{type(event).__name__} v{event.originator_version} of "
                    f"{event.originator_id} at {at}, before its predecessor "
                    f"at {previous}"
                )
            self.last_time = at
            self.last_by_aggregate[event.originator_id] = at

    # -- what pools reserve --------------------------------------------------------

    def _check_reserved(self, written: list[Any]) -> None:
        """Invariant 1 with costs per instance (see the module's notes)."""
        for event in written:
            if isinstance(event, Pool.Event):
                self._follow_pool(event)
        for pool in self.pools():
            key = pool.id
            expected = self._reserved.get(key, dict.fromkeys(DIMENSIONS, 0))
            assert pool.reserved.as_dict() == expected, (
                f"pool {pool.name} reserves {pool.reserved.as_dict()}; its events "
                f"say its reservations' workers and instances' costs are {expected}"
            )
            instances = self._instances.get(key, {})
            assert {n: s.cost for n, s in pool.servers.items()} == {
                n: None if c is None else Resources.from_dict(c)
                for n, c in instances.items()
            }

    def _follow_pool(self, event: Any) -> None:
        key = event.originator_id
        reserved = self._reserved.setdefault(key, dict.fromkeys(DIMENSIONS, 0))
        instances = self._instances.setdefault(key, {})

        def add(amounts: dict[str, int] | None, sign: int) -> None:
            for dimension in DIMENSIONS:
                reserved[dimension] += sign * (amounts or {}).get(dimension, 0)

        if isinstance(event, Pool.Created | Pool.Reconfigured):
            self._sizes[key] = dict(event.worker_size)
            self._costs[key] = {n: dict(c) for n, c in event.server_costs.items()}
        elif isinstance(event, Pool.Reserved):
            size, workers = self._sizes[key], event.resources["workers"]
            assert event.resources == {
                "cpu_millicores": size["cpu_millicores"] * workers,
                "memory_mib": size["memory_mib"] * workers,
                "workers": workers,
            }, f"{event.allocation_id} holds more than its workers: {event.resources}"
            add(event.resources, 1)
        elif isinstance(event, Pool.Freed):
            add(event.resources, -1)
        elif isinstance(event, Pool.ServerStarted):
            configured = self._costs[key].get(event.name)
            expected = {
                "cpu_millicores": (configured or {}).get("cpu_millicores", 0),
                "memory_mib": (configured or {}).get("memory_mib", 0),
                "workers": 0,
            }
            assert event.cost == expected, (event.name, event.cost, expected)
            instances[event.name] = event.cost
            add(event.cost, 1)
            if any(event.cost.values()):
                self.counts["instance with a cost"] += 1
        elif isinstance(event, Pool.ServerCharged):
            assert instances.get(event.name, {}) is None
            instances[event.name] = event.cost
            add(event.cost, 1)
        elif isinstance(event, Pool.ServerStopped):
            held = instances.pop(event.name)
            assert event.cost == held, (event.name, event.cost, held)
            add(held, -1)
            if event.reason == "reclaimed":
                self.counts["reclaimed"] += 1

    # -- granted and preempted ---------------------------------------------------

    def _check_not_granted_and_preempted(self, written: list[Any]) -> None:
        by_allocation: dict[str, list[Any]] = defaultdict(list)
        for event in written:
            if isinstance(event, Allocation.Event):
                allocation_id = self._allocation_id(event)
                self.histories[allocation_id].append(event)
                by_allocation[allocation_id].append(event)
        for allocation_id, events in by_allocation.items():
            names = [type(e).__name__ for e in events]
            if "Preempted" not in names:
                continue
            history = [type(e).__name__ for e in self.histories[allocation_id]]
            start = len(history) - len(names)
            granted = [
                name
                for i, name in enumerate(names)
                if name in HOLDS
                or (name == "Requested" and _holds_after_request(history, start + i))
            ]
            assert not granted, (
                f"{allocation_id} was {', '.join(granted)} and preempted in one "
                f"decision at {events[-1].timestamp}: {names}"
            )
            self.counts["preempted"] += 1

    def _allocation_id(self, event: Any) -> str:
        if isinstance(event, Allocation.Requested):
            self._ids[event.originator_id] = event.allocation_id
        return self._ids[event.originator_id]

    # -- the queue -------------------------------------------------------------

    def _check_nothing_hopeless_queued(self) -> None:
        queued_rows = {
            row.allocation_id: row
            for row in self.store.list_allocations(
                ListingQuery(state=AllocationState.QUEUED)
            )
        }
        in_queues: set[str] = set()
        for pool in self.pools():
            settings = pool.settings
            size = settings.worker_size
            costs = dict(settings.server_costs or {})
            total = settings.capacity.as_dict()
            for entry in pool.queue.values():
                in_queues.add(entry.allocation_id)
                request = entry.request
                workers = {
                    "cpu_millicores": size.cpu_millicores * request.workers,
                    "memory_mib": size.memory_mib * request.workers,
                    "workers": request.workers,
                }
                # In the empty pool it would also start each of its servers;
                # a quota counts its workers only (instances are the pool's).
                need = dict(workers)
                for server in request.servers:
                    cost = costs.get(server)
                    if cost is not None:
                        need["cpu_millicores"] += cost.cpu_millicores
                        need["memory_mib"] += cost.memory_mib
                limits = [("the pool's total", total, need)]
                if entry.tenant is not None and entry.tenant in pool.quotas:
                    quota = pool.quotas[entry.tenant].as_dict()
                    limits.append((f"{entry.tenant}'s quota", quota, workers))
                for what, limit, wanted in limits:
                    for dimension in DIMENSIONS:
                        assert wanted[dimension] <= limit[dimension], (
                            f"{entry.allocation_id} is queued for "
                            f"{wanted[dimension]} {dimension}, more than {what} "
                            f"({limit[dimension]}): it can never be granted"
                        )
                self.counts["queued"] += 1
        assert set(queued_rows) == in_queues, (
            f"listed as queued {sorted(queued_rows)}, in the queues {sorted(in_queues)}"
        )

    # -- usage -------------------------------------------------------------------

    def _check_usage(self, now: datetime) -> None:
        totals: dict[tuple[str, str], dict[str, float]] = {}
        for allocation_id, events in self.histories.items():
            held = self.settled.get(allocation_id)
            if held is None:
                held = _held(events, now)
                view = self.store.get_allocation(allocation_id)
                assert view is not None, f"{allocation_id} is not in the listing"
                span = reserved_span(view, now)
                billed = 0.0 if span is None else (span[1] - span[0]).total_seconds()
                assert abs(billed - held.seconds) < TOLERANCE, (
                    f"{allocation_id} ({view.state}) is billed {billed} s; its "
                    f"events say it held capacity for {held.seconds} s"
                )
                if type(events[-1]).__name__ in ENDS:
                    self.settled[allocation_id] = held
            row = totals.setdefault(
                (held.job_id, held.pool),
                {"cpu": 0.0, "memory": 0.0, "workers": 0.0, "servers": 0.0},
            )
            row["cpu"] += held.resources["cpu_millicores"] * held.seconds / 1000
            row["memory"] += held.resources["memory_mib"] * held.seconds
            row["workers"] += held.resources["workers"] * held.seconds
            row["servers"] += held.servers * held.seconds
            if held.seconds > 0:
                self.counts["billed"] += 1
        rows = {(r.job_id, r.pool): r for r in self.store.usage(UsageQuery(), now)}
        for key, expected in totals.items():
            usage = rows.get(key)
            if usage is None:
                assert all(v == 0 for v in expected.values()), (key, expected)
                continue
            found = {
                "cpu": usage.cpu_core_seconds,
                "memory": usage.memory_mb_seconds,
                "workers": usage.worker_seconds,
                "servers": usage.mcp_server_seconds,
            }
            for dimension, amount in expected.items():
                assert abs(found[dimension] - amount) < TOLERANCE * max(1, amount), (
                    f"usage of {key}: {dimension} {found[dimension]}, its "
                    f"allocations' events say {amount}"
                )


def _holds_after_request(history: list[str], index: int) -> bool:
    """A `Requested` held capacity unless it was queued or refused at once."""
    following = history[index + 1] if index + 1 < len(history) else None
    return following not in NOT_HELD_AFTER_REQUEST


def _held(events: list[Any], now: datetime) -> Held:
    names = [type(e).__name__ for e in events]
    first = events[0]
    assert isinstance(first, Allocation.Requested), names
    held_from: datetime | None = None
    ended: datetime | None = None
    lease: datetime | None = None
    resources = dict(first.resources)
    for index, (name, event) in enumerate(zip(names, events, strict=True)):
        if name == "Requested":
            if _holds_after_request(names, index):
                held_from = event.timestamp
            lease = event.expires_at
        elif name == "Granted":
            held_from = event.timestamp
            lease = event.expires_at
            if event.resources is not None:  # the pool's sizes at the grant
                resources = dict(event.resources)
        elif name in {"Activated", "Renewed"}:
            lease = event.expires_at
        elif name == "Expired":
            ended = event.expires_at
        elif name in GIVES_BACK and ended is None:
            ended = event.timestamp
    seconds = 0.0
    if held_from is not None:
        if ended is None:
            ended = now if lease is None else min(now, lease)
        seconds = max((ended - held_from).total_seconds(), 0.0)
    return Held(
        job_id=str(first.request["job_id"]),
        pool=first.pool,
        resources=resources,
        servers=len(first.request.get("servers", ())),
        seconds=seconds,
    )
