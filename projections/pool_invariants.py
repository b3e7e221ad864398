"""The checks `verify` makes of each pool's event, as it reads it.

A pool's events are judged one at a time against the pool's own bookkeeping,
kept here: its port ranges, the ports its workers and MCP servers hold, and
what each running MCP server instance reserves. Invariant 1: a reservation or
a server start never takes the pool past its capacity, and a server is charged
once and gives back what it held. Invariant 2: every port lies in its pool's
ranges, is used once, and no two pools share ranges or a port. Invariant 10:
a reservation never takes a tenant past its quota.

Only the first failure counts: `PoolInvariants` tells its `fail` callback of
each one it finds and leaves the keeping of the first to the caller
(`projections/verify.py`, whose checker also makes the checks that span an
allocation and its pool).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.values import Dimension, Resources
from allocation_ledger.projections.views import CapacityView

_NOTHING = Resources()  # read only: what a pool with no running instance holds

Fail = Callable[[int, str, int, str], None]
"""Told of a broken invariant: (position, event name, invariant, message)."""


@dataclass
class _PoolState:
    worker_ports: set[int] = field(default_factory=set)
    server_ports: dict[str, int] = field(default_factory=dict)
    ranges: PortRanges = field(default_factory=PortRanges)
    server_costs: dict[str, Resources] = field(default_factory=dict)
    """What each running instance reserves (none for one started before
    instances held their cost)."""

    def instance_costs(self) -> Resources:
        total = Resources()
        for cost in self.server_costs.values():
            total = total + cost
        return total

    def instance_amounts(self) -> tuple[int, int, int] | None:
        """`instance_costs` as (cpu, memory, workers); None when no
        running instance reserves anything of its own."""
        if not self.server_costs:
            return None
        cpu = memory = workers = 0
        for cost in self.server_costs.values():
            cpu += cost.cpu_millicores
            memory += cost.memory_mib
            workers += cost.workers
        return cpu, memory, workers


class PoolInvariants:
    """Feed it every pool's events in log order with the pool's capacity
    row before each event; it tells `fail` of each broken invariant."""

    def __init__(self, fail: Fail) -> None:
        self._fail = fail
        self.pools: dict[UUID, _PoolState] = {}
        self._owners: dict[int, UUID] = {}  # port: the pool holding it

    def instance_costs(self, key: UUID) -> Resources:
        """What the running MCP server instances of pool `key` reserve."""
        state = self.pools.get(key)
        return _NOTHING if state is None else state.instance_costs()

    def instance_amounts(self, key: UUID) -> tuple[int, int, int] | None:
        """`instance_costs` as integers (cpu, memory, workers), None for none."""
        state = self.pools.get(key)
        return None if state is None else state.instance_amounts()

    def check(
        self, position: int, event: Pool.Event, capacity: CapacityView | None
    ) -> None:
        """The checks of a pool's event (invariants 1, 2 and 10); `capacity`:
        the pool's row before the event, None before its creation."""
        name = type(event).__name__
        key = event.originator_id
        state = self.pools.get(key)
        if state is None:
            state = self.pools[key] = _PoolState()
        if isinstance(event, Pool.Reserved):
            for port in event.worker_ports:
                if not state.ranges.has_worker_port(port):
                    self._fail(position, name, 2, f"worker port {port} out of range")
                if port in state.worker_ports or port in state.server_ports.values():
                    self._fail(position, name, 2, f"worker port {port} already in use")
            self._check_not_elsewhere(position, name, key, event.worker_ports)
            state.worker_ports.update(event.worker_ports)
            if capacity is not None and event.tenant in capacity.quotas:
                added = Resources.from_dict(event.resources)
                tenant_holds = (
                    capacity.held_by_tenant.get(event.tenant, Resources()) + added
                )
                limit = capacity.quotas[event.tenant]
                for dimension in (Dimension.WORKERS, Dimension.CPU, Dimension.MEMORY):
                    if added.amount(dimension) > 0 and tenant_holds.amount(
                        dimension
                    ) > limit.amount(dimension):
                        self._fail(
                            position,
                            name,
                            10,
                            f"tenant {event.tenant!r} over its quota in "
                            f"{dimension}: {tenant_holds.amount(dimension)} of "
                            f"{limit.amount(dimension)}",
                        )
            self._check_room_amounts(position, name, capacity, event.resources)
        elif isinstance(event, Pool.Freed):
            state.worker_ports.difference_update(event.worker_ports)
            for port in event.worker_ports:
                if self._owners.get(port) == key:
                    del self._owners[port]
        elif isinstance(event, Pool.Created | Pool.PortsChanged):
            state.ranges = PortRanges(**event.ports) if event.ports else PortRanges()
            for other_key, other in self.pools.items():
                if other_key != key and other.ranges.overlaps(state.ranges):
                    self._fail(position, name, 2, "two pools share port ranges")
            for port, owner in self._owners.items():
                if owner != key and state.ranges.has_port(port):
                    self._fail(
                        position,
                        name,
                        2,
                        f"a pool's ranges take port {port}, which another pool holds",
                    )
                    break
        elif isinstance(event, Pool.ServerStarted):
            ranges = state.ranges
            if not ranges.has_mcp_port(event.port):
                self._fail(position, name, 2, f"MCP port {event.port} out of range")
            if (
                event.port in state.server_ports.values()
                or event.port in state.worker_ports
            ):
                self._fail(position, name, 2, f"MCP port {event.port} already in use")
            self._check_not_elsewhere(position, name, key, [event.port])
            state.server_ports[event.name] = event.port
            if event.cost is not None:
                cost = Resources.from_dict(event.cost)
                state.server_costs[event.name] = cost
                self._check_room(position, name, capacity, cost)
        elif isinstance(event, Pool.ServerCharged):
            if event.name not in state.server_ports:
                self._fail(position, name, 1, f"MCP server {event.name!r} not running")
            elif event.name in state.server_costs:
                self._fail(
                    position, name, 1, f"MCP server {event.name!r} charged twice"
                )
            else:
                cost = Resources.from_dict(event.cost)
                state.server_costs[event.name] = cost
                self._check_room(position, name, capacity, cost)
        elif isinstance(event, Pool.ServerStopped):
            stopped = state.server_ports.pop(event.name, None)
            if stopped is not None and self._owners.get(stopped) == key:
                del self._owners[stopped]
            held = state.server_costs.pop(event.name, None)
            freed = None if event.cost is None else Resources.from_dict(event.cost)
            if held != freed:
                self._fail(
                    position,
                    name,
                    1,
                    f"MCP server {event.name!r} gives back {freed} but held {held}",
                )

    def _check_room_amounts(
        self,
        position: int,
        name: str,
        capacity: CapacityView | None,
        added: dict[str, int],
    ) -> None:
        """`_check_room` of amounts as events hold them, on plain integers
        (a reservation's, a million times in a long history); the Resources
        are made only to word a failure."""
        if capacity is None:
            return
        reserved = capacity.reserved
        total = capacity.total
        cpu = added["cpu_millicores"]
        memory = added["memory_mib"]
        workers = added["workers"]
        if (
            (workers > 0 and reserved.workers + workers > total.workers)
            or (cpu > 0 and reserved.cpu_millicores + cpu > total.cpu_millicores)
            or (memory > 0 and reserved.memory_mib + memory > total.memory_mib)
        ):
            self._check_room(position, name, capacity, Resources.from_dict(added))

    def _check_room(
        self,
        position: int,
        name: str,
        capacity: CapacityView | None,
        added: Resources,
    ) -> None:
        """Invariant 1: what a reservation or a server start adds never
        takes a dimension it adds to past the pool's capacity."""
        if capacity is None:
            return
        after = capacity.reserved + added
        for dimension in (Dimension.WORKERS, Dimension.CPU, Dimension.MEMORY):
            if added.amount(dimension) > 0 and after.amount(
                dimension
            ) > capacity.total.amount(dimension):
                self._fail(
                    position,
                    name,
                    1,
                    f"pool {capacity.pool!r} over-committed in {dimension}: "
                    f"{after.amount(dimension)} reserved of "
                    f"{capacity.total.amount(dimension)}",
                )
                return

    def _check_not_elsewhere(
        self, position: int, name: str, key: UUID, ports: list[int]
    ) -> None:
        """Invariant 2 across pools: no port is held by two pools at once."""
        for port in ports:
            if self._owners.get(port, key) != key:
                self._fail(position, name, 2, f"port {port} held by another pool too")
                return
            self._owners[port] = key
