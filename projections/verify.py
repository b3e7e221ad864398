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

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
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
from allocation_ledger.projections.folds import fold_allocation
from allocation_ledger.projections.pool_invariants import PoolInvariants
from allocation_ledger.projections.store import InMemoryReadModels, ReadModelStore
from allocation_ledger.projections.views import AllocationView

_LIVE = frozenset(s.value for s in LIVE_STATES)
_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)

# Read only: what a pool with no live allocations holds, and the servers they name.
_NOTHING = Resources()
_NO_NAMES: Counter[str] = Counter()

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
        self._held: dict[str, Resources] = {}
        self._naming: dict[str, Counter[str]] = {}
        self._preemptions: list[tuple[int, str, str]] = []  # position, victim, by

    def feed(self, position: int, event: object) -> None:
        if self.violation is not None:
            return
        moment = getattr(event, "timestamp", None)
        if self._moment is not None and moment != self._moment:
            self._check_balance(self._last_position, "end of unit of work")
        if self.violation is not None:
            return
        self._check_time(position, event)
        if isinstance(event, Allocation.Event):
            before = self.batch.allocations.get(event.originator_id)
            self._check_allocation_event(position, event, before)
            if self.violation is None:
                self._fold_allocation(position, event, before)
        else:
            if isinstance(event, Pool.Event):
                capacity = self.batch.capacities.get(event.originator_id)
                self._pools.check(position, event, capacity)
            if self.violation is None:
                fold_event(self.batch, event, position, self.models)
        self._moment = moment if isinstance(moment, datetime) else None
        self._last_position = position
        self.events += 1

    def finish(self) -> Violation | None:
        if self.violation is None and self.events:
            self._check_balance(self._last_position, "end of log")
        return self.violation

    def _fold_allocation(
        self, position: int, event: Allocation.Event, before: AllocationView | None
    ) -> None:
        """Fold an allocation's event into its row `before` (as `fold_event`
        does, without looking the row up again), keeping the live totals per
        pool and noting the allocations that end."""
        key = event.originator_id
        was_live = before is not None and before.state in _LIVE
        if isinstance(event, Allocation.Requested):
            self.allocations += 1
            view = fold_allocation(None, event)
            view.sequence = position
            self.batch.allocations[key] = view
        elif before is None:  # not held (an audit stops before: invariant 4)
            fold_event(self.batch, event, position, self.models)
            view = self.batch.allocations[key]
        else:
            view = fold_allocation(before, event)  # changes `before` in place
        self._count_live(view, was_live)
        if view.state in _TERMINAL:
            self._ending.append(key)

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

    def _check_allocation_event(
        self, position: int, event: Allocation.Event, view: AllocationView | None
    ) -> None:
        """Invariant 4 (nothing after the end) for an event of an allocation
        whose row, before the event, is `view`; notes preemptions."""
        if isinstance(event, Allocation.Requested):
            return
        if view is None:
            self._fail(
                position, type(event).__name__, 4, self._unknown(event.originator_id)
            )
        elif view.state in _TERMINAL:
            self._fail(
                position,
                type(event).__name__,
                4,
                f"allocation {view.allocation_id} is already {view.state}",
            )
        if isinstance(event, Allocation.Preempted) and view is not None:
            self._preemptions.append((position, view.priority, event.by))

    # -- across aggregates ---------------------------------------------------

    def _count_live(self, view: AllocationView, was_live: bool) -> None:
        """Keep the live allocations' totals per pool as states change."""
        is_live = view.state in _LIVE
        if is_live == was_live:
            return
        pool = view.pool
        held = self._held.get(pool)
        naming = self._naming.get(pool)
        if naming is None:
            naming = self._naming[pool] = Counter()
        if is_live:
            self._held[pool] = view.resources if held is None else held + view.resources
            naming.update(view.servers_requested)
        else:
            self._held[pool] = (Resources() if held is None else held) - view.resources
            naming.subtract(view.servers_requested)

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
        for key, capacity in self.batch.capacities.items():
            live = held.get(capacity.pool, _NOTHING)
            instances = self._pools.instance_costs(key)
            if capacity.reserved != live + instances:
                self._fail(
                    position,
                    where,
                    1,
                    f"pool {capacity.pool!r} reserves {capacity.reserved} but its "
                    f"live allocations hold {live} and its running MCP server "
                    f"instances {instances}",
                )
                return
            counts = naming.get(capacity.pool, _NO_NAMES)
            for server in capacity.servers.values():
                if server.references != counts[server.name]:
                    self._fail(
                        position,
                        where,
                        3,
                        f"MCP server {server.name!r} in pool {capacity.pool!r} has "
                        f"{server.references} references but {counts[server.name]} "
                        "live allocations name it",
                    )
                    return
            missing = {n for n, c in counts.items() if c > 0} - set(capacity.servers)
            if missing:
                self._fail(
                    position,
                    where,
                    3,
                    f"live allocations name MCP servers {sorted(missing)} that are "
                    f"not running in pool {capacity.pool!r}",
                )
                return
