"""Checking the design's invariants over the whole history, event by event.

The checker folds the log with the live folds and, alongside, keeps what it
needs to judge each event: the live allocations' resources and the MCP servers
they name, and (through `projections/pool_invariants.py`, the checks of each
pool's event) the ports in use and what running MCP server instances reserve.
This module holds the checks of allocations' events (invariants 4 and 9), of
time (8) and those that span two aggregates (an allocation and its pool:
invariants 1 and 3), made when a unit of work is complete, that is, at the end
of each run of events with the same timestamp: one unit of work writes all its
events at one moment of the ledger's clock.

Memory does not grow with the history: an allocation that ended (a terminal
state) can take no further event, so at the end of its unit of work it is
handed to `settled` (verify compares it with the stored read model there)
and forgotten. Only live allocations, pools and the port and server
bookkeeping stay in memory.

Time (invariant 8): within each aggregate, no event is earlier than the one
before it. Across the log, no event is earlier than the latest before it by
more than `time_tolerance`: servers sharing one PostgreSQL store take their
moment before they commit, so events of unrelated aggregates may land in the
log slightly out of time order (see docs/operations.md, "Time").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast
from uuid import UUID

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.values import (
    LIVE_STATES,
    TERMINAL_STATES,
    Priority,
    Resources,
)
from allocation_ledger.projections.catchup import Batch, fold_event
from allocation_ledger.projections.folds import fold_allocation, fold_capacity
from allocation_ledger.projections.pool_invariants import PoolInvariants
from allocation_ledger.projections.store import InMemoryReadModels, ReadModelStore
from allocation_ledger.projections.views import AllocationView

_LIVE = frozenset(s.value for s in LIVE_STATES)
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)

# Read only: what a pool with no live allocations holds, and the servers they name.
_NONE_HELD = (0, 0, 0)
_NO_NAMES: dict[str, int] = {}

# What an event class is to the checker (found once per class, not per event).
_OTHER, _REQUESTED, _ALLOCATION, _POOL = range(4)
_KINDS: dict[type[object], int] = {}


def _kind(cls: type[object]) -> int:
    found = _KINDS.get(cls)
    if found is None:
        if issubclass(cls, Allocation.Event):
            found = _REQUESTED if issubclass(cls, Allocation.Requested) else _ALLOCATION
        elif issubclass(cls, Pool.Event):
            found = _POOL
        else:
            found = _OTHER
        _KINDS[cls] = found
    return found


DEFAULT_TIME_TOLERANCE = timedelta(seconds=5)
"""How much earlier than the latest event before it an event of another
aggregate may be recorded: room for servers on one PostgreSQL store that
took their moments in one order and committed in the other. Far below any
step of a clock worth reporting; never applied within one aggregate."""


@dataclass(frozen=True)
class Violation:
    position: int
    event: str
    invariant: int
    message: str

    def __str__(self) -> str:
        return (
            f"invariant {self.invariant} broken at position {self.position} "
            f"({self.event}): {self.message}"
        )


Settled = Callable[[UUID, AllocationView], None]
"""Told of each allocation once it ended, with its replayed row, at the end
of the unit of work that ended it."""


class InvariantChecker:
    """Feed it every event in log order; it records the first violation.

    `settled`: told of each allocation that ended, before it is forgotten
    (see the module's notes). `lookup`: where to read the final row of an
    allocation an event names that the checker no longer holds, only to
    word the violation (already ended, or never requested)."""

    def __init__(
        self,
        *,
        time_tolerance: timedelta = DEFAULT_TIME_TOLERANCE,
        settled: Settled | None = None,
        lookup: ReadModelStore | None = None,
    ) -> None:
        self.time_tolerance = time_tolerance
        self._negative_tolerance = time_tolerance < timedelta(0)
        self._settled = settled
        self._lookup = lookup
        self._ending: list[UUID] = []
        self.allocations = 0
        """Allocations requested so far (live and ended)."""
        self._times: dict[UUID, datetime] = {}  # per aggregate, its last event
        self._latest: tuple[datetime, int] | None = None  # and its position
        self.batch = Batch()
        self.models = InMemoryReadModels()
        self._pools = PoolInvariants(self._fail)
        self.violation: Violation | None = None
        self.events = 0
        self._moment: datetime | None = None
        self._last_position = 0
        # Per pool, what its live allocations hold (cpu, memory, workers) and
        # how many of them name each MCP server: plain integers, kept as
        # states change (a long history changes them a million times).
        self._held: dict[str, list[int]] = {}
        self._naming: dict[str, dict[str, int]] = {}
        self._preemptions: list[tuple[int, str, str]] = []  # position, victim, by

    def feed(self, position: int, event: object) -> None:
        if self.violation is not None:
            return
        moment = getattr(event, "timestamp", None)
        if self._moment is not None and moment != self._moment:
            self._check_balance(self._last_position, "end of unit of work")
            if self.violation is not None:
                return
        key = getattr(event, "originator_id", None)
        if type(moment) is datetime and type(key) is UUID:
            # Invariant 8 inline (see the module's notes); `_check_time`
            # words a fault and takes any other kind of moment or id.
            times = self._times
            previous = times.get(key)
            latest = self._latest
            if (previous is not None and moment < previous) or (
                latest is not None
                and (moment < latest[0] or self._negative_tolerance)
                and latest[0] - moment > self.time_tolerance
            ):
                self._check_time(position, event)
            else:
                if previous is None or moment > previous:
                    times[key] = moment
                if latest is None or moment > latest[0]:
                    self._latest = (moment, position)
            self._moment = moment
        else:
            self._check_time(position, event)
            self._moment = moment if isinstance(moment, datetime) else None
        kind = _KINDS.get(type(event))
        if kind is None:
            kind = _kind(type(event))
        if kind == _ALLOCATION:
            self._allocation_event(position, cast(Allocation.Event, event))
        elif kind == _REQUESTED:
            self._requested(position, cast(Allocation.Requested, event))
        elif kind == _POOL:
            self._pool_event(position, cast(Pool.Event, event))
        elif self.violation is None:
            fold_event(self.batch, event, position, self.models)
        self._last_position = position
        self.events += 1

    def finish(self) -> Violation | None:
        if self.violation is None and self.events:
            self._check_balance(self._last_position, "end of log")
        return self.violation

    def _requested(self, position: int, event: Allocation.Requested) -> None:
        """A request starts a row (and counts as live unless it failed)."""
        if self.violation is not None:
            return
        key = event.originator_id
        before = self.batch.allocations.get(key)
        self.allocations += 1
        view = fold_allocation(None, event)
        view.sequence = position
        self.batch.allocations[key] = view
        self._count_live(view, before is not None and before.state in _LIVE)

    def _allocation_event(self, position: int, event: Allocation.Event) -> None:
        """Invariant 4 (nothing after the end, nothing before the request),
        preemptions noted, then the event folded into its row in place."""
        key = event.originator_id
        before = self.batch.allocations.get(key)
        if before is None:
            self._fail(position, type(event).__name__, 4, self._unknown(key))
            return
        was = before.state
        if was in _TERMINAL:
            self._fail(
                position,
                type(event).__name__,
                4,
                f"allocation {before.allocation_id} is already {was}",
            )
            return
        if isinstance(event, Allocation.Preempted):
            self._preemptions.append((position, before.priority, event.by))
        if self.violation is not None:
            return
        fold_allocation(before, event)  # changes `before` in place
        state = before.state
        if state is not was:
            self._count_live(before, was in _LIVE)
            if state in _TERMINAL:
                self._ending.append(key)

    def _pool_event(self, position: int, event: Pool.Event) -> None:
        """The pool's own checks, then the event folded into its row."""
        capacities = self.batch.capacities
        key = event.originator_id
        capacity = capacities.get(key)
        self._pools.check(position, event, capacity)
        if self.violation is not None:
            return
        if capacity is None:  # not created yet: as the live folds say it
            fold_event(self.batch, event, position, self.models)
        else:
            capacities[key] = fold_capacity(capacity, event)

    def _settle(self) -> None:
        """Hand over and forget the allocations that ended in this unit."""
        for key in self._ending:
            view = self.batch.allocations.pop(key, None)
            self._times.pop(key, None)
            if view is not None and self._settled is not None:
                self._settled(key, view)
        self._ending.clear()

    # -- per event ---------------------------------------------------------

    def _fail(self, position: int, event: str, invariant: int, message: str) -> None:
        if self.violation is None:
            self.violation = Violation(position, event, invariant, message)

    def _check_time(self, position: int, event: object) -> None:
        """Invariant 8: event times never decrease (see the module's notes)."""
        moment = getattr(event, "timestamp", None)
        key = getattr(event, "originator_id", None)
        if not isinstance(moment, datetime) or not isinstance(key, UUID):
            return
        name = type(event).__name__
        previous = self._times.get(key)
        latest = self._latest
        if previous is not None and moment < previous:
            self._fail(
                position,
                name,
                8,
                f"recorded at {moment.isoformat()}, earlier than the previous "
                f"event of {self._aggregate_name(key)} "
                f"({previous.isoformat()})",
            )
        elif latest is not None and latest[0] - moment > self.time_tolerance:
            behind = (latest[0] - moment).total_seconds()
            self._fail(
                position,
                name,
                8,
                f"recorded at {moment.isoformat()}, {behind:g} s earlier than "
                f"the event at position {latest[1]} ({latest[0].isoformat()}); "
                f"more than the {self.time_tolerance.total_seconds():g} s "
                "allowed between servers",
            )
        if previous is None or moment > previous:
            self._times[key] = moment
        if latest is None or moment > latest[0]:
            self._latest = (moment, position)

    def _unknown(self, key: UUID) -> str:
        """Why an allocation the checker does not hold takes no event."""
        ended = None if self._lookup is None else self._lookup.allocations([key])
        view = None if ended is None else ended.get(key)
        if view is not None:
            return f"allocation {view.allocation_id} had already ended"
        return "event for an allocation never requested"

    def _aggregate_name(self, key: UUID) -> str:
        allocation = self.batch.allocations.get(key)
        if allocation is not None:
            return f"allocation {allocation.allocation_id}"
        capacity = self.batch.capacities.get(key)
        if capacity is not None:
            return f"pool {capacity.pool!r}"
        return f"aggregate {key}"

    # -- across aggregates ---------------------------------------------------

    def _count_live(self, view: AllocationView, was_live: bool) -> None:
        """Keep the live allocations' totals per pool as states change."""
        is_live = view.state in _LIVE
        if is_live == was_live:
            return
        pool = view.pool
        held = self._held.get(pool)
        if held is None:
            held = self._held[pool] = [0, 0, 0]
        naming = self._naming.get(pool)
        if naming is None:
            naming = self._naming[pool] = {}
        resources = view.resources
        step = 1 if is_live else -1
        held[0] += step * resources.cpu_millicores
        held[1] += step * resources.memory_mib
        held[2] += step * resources.workers
        for name in view.servers_requested:
            naming[name] = naming.get(name, 0) + step

    def _check_preemptions(self) -> None:
        """Only strictly lower priorities are preempted (checked once the
        preempting allocation, written in the same unit of work, is known)."""
        for position, victim_priority, by in self._preemptions:
            preemptor = self.batch.allocations.get(allocation_uuid(by))
            if preemptor is None:
                self._fail(position, "Preempted", 9, f"preempted by unknown {by}")
            elif Priority(victim_priority).rank >= Priority(preemptor.priority).rank:
                self._fail(
                    position,
                    "Preempted",
                    9,
                    f"a {victim_priority} allocation was preempted by {by}, "
                    f"of priority {preemptor.priority}",
                )
        self._preemptions.clear()

    def _check_balance(self, position: int, where: str) -> None:
        self._check_preemptions()
        if self.violation is not None:
            return
        self._check_totals(position, where)
        if self.violation is None:
            self._settle()

    def _check_totals(self, position: int, where: str) -> None:
        held = self._held
        naming = self._naming
        pools = self._pools
        for key, capacity in self.batch.capacities.items():
            cpu, memory, workers = held.get(capacity.pool, _NONE_HELD)
            instances = pools.instance_amounts(key)
            if instances is not None:
                cpu += instances[0]
                memory += instances[1]
                workers += instances[2]
            reserved = capacity.reserved
            if (
                reserved.cpu_millicores != cpu
                or reserved.memory_mib != memory
                or reserved.workers != workers
            ):
                live = Resources(*held.get(capacity.pool, _NONE_HELD))
                self._fail(
                    position,
                    where,
                    1,
                    f"pool {capacity.pool!r} reserves {capacity.reserved} but its "
                    f"live allocations hold {live} and its running MCP server "
                    f"instances {pools.instance_costs(key)}",
                )
                return
            counts = naming.get(capacity.pool, _NO_NAMES)
            for server in capacity.servers.values():
                count = counts.get(server.name, 0)
                if server.references != count:
                    self._fail(
                        position,
                        where,
                        3,
                        f"MCP server {server.name!r} in pool {capacity.pool!r} has "
                        f"{server.references} references but {count} "
                        "live allocations name it",
                    )
                    return
            servers = capacity.servers
            missing = {n for n, c in counts.items() if c > 0 and n not in servers}
            if missing:
                self._fail(
                    position,
                    where,
                    3,
                    f"live allocations name MCP servers {sorted(missing)} that are "
                    f"not running in pool {capacity.pool!r}",
                )
                return
