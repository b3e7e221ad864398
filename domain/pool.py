"""The Pool aggregate: the consistency boundary for a pool's capacity.

Every decision that takes or gives back capacity is made here, against the
pool's current version; a concurrent writer loses on that version.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.values import (
    INSUFFICIENT_CAPACITY,
    MILLICORES_PER_CORE,
    AllocationRequest,
    Dimension,
    Rejection,
    Resources,
)

DEFAULT_POOL = "default"
DEFAULT_CAPACITY = Resources(16 * MILLICORES_PER_CORE, 32768, 10)
DEFAULT_WORKER_SIZE = Resources(1 * MILLICORES_PER_CORE, 2048, 1)
DEFAULT_IDLE_TIMEOUT_SECONDS = 300
MCP_PORT_FIRST = 9000
MCP_PORT_LAST = 9099
WORKER_PORT_FIRST = 8000
WORKER_PORT_LAST = 8999


def pool_uuid(name: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"allocation-ledger:pool:{name}")


@dataclass(frozen=True)
class Reservation:
    """Capacity held by one live allocation."""

    allocation_id: str
    resources: Resources
    worker_ports: tuple[int, ...]
    servers: tuple[str, ...]
    expires_at: datetime


@dataclass(frozen=True)
class ServerInstance:
    """A running MCP server. Idle when no live allocation names it."""

    name: str
    port: int
    references: int
    started_at: datetime
    idle_since: datetime | None


@dataclass(frozen=True)
class PoolSettings:
    """How big a pool is and what its workers and MCP servers cost."""

    capacity: Resources = DEFAULT_CAPACITY
    worker_size: Resources = DEFAULT_WORKER_SIZE
    server_costs: Mapping[str, Resources] | None = None
    idle_timeout_seconds: int = DEFAULT_IDLE_TIMEOUT_SECONDS

    def cost_of_server(self, name: str) -> Resources:
        if self.server_costs is None:
            return Resources()
        return self.server_costs.get(name, Resources())

    def resources_for(self, request: AllocationRequest) -> Resources:
        """What a request holds while live: its workers plus its servers' costs."""
        total = Resources(
            self.worker_size.cpu_millicores * request.workers,
            self.worker_size.memory_mib * request.workers,
            request.workers,
        )
        for name in request.servers:
            total = total + self.cost_of_server(name)
        return total


def _costs_to_event(costs: Mapping[str, Resources] | None) -> dict[str, Any]:
    return {name: amount.as_dict() for name, amount in sorted((costs or {}).items())}


def _costs_from_event(costs: Mapping[str, Any]) -> dict[str, Resources]:
    return {name: Resources.from_dict(amount) for name, amount in costs.items()}


@dataclass(frozen=True)
class ReservedPorts:
    """Ports the pool assigned to one reservation."""

    worker_ports: tuple[int, ...]
    servers: tuple[tuple[str, int, bool], ...]  # name, port, started now
    stopped: tuple[tuple[str, int], ...] = ()  # idle servers stopped for ports


class Pool(Aggregate):
    TOPIC = "allocation-ledger:pool"

    class Event(Aggregate.Event):
        TOPIC = "allocation-ledger:pool:event"
        actor: str

    class Created(Event, Aggregate.Created):
        TOPIC = "allocation-ledger:pool:created"
        name: str
        capacity: dict[str, int]
        worker_size: dict[str, int]
        server_costs: dict[str, Any]
        idle_timeout_seconds: int

        def apply(self, aggregate: Pool) -> None:
            aggregate.name = self.name
            aggregate.settings = PoolSettings(
                capacity=Resources.from_dict(self.capacity),
                worker_size=Resources.from_dict(self.worker_size),
                server_costs=_costs_from_event(self.server_costs),
                idle_timeout_seconds=self.idle_timeout_seconds,
            )

    class CapacityChanged(Event):
        TOPIC = "allocation-ledger:pool:capacity-changed"
        capacity: dict[str, int]

        def apply(self, aggregate: Pool) -> None:
            aggregate.settings = replace(
                aggregate.settings, capacity=Resources.from_dict(self.capacity)
            )

    class Reconfigured(Event):
        TOPIC = "allocation-ledger:pool:reconfigured"
        worker_size: dict[str, int]
        server_costs: dict[str, Any]
        idle_timeout_seconds: int

        def apply(self, aggregate: Pool) -> None:
            aggregate.settings = replace(
                aggregate.settings,
                worker_size=Resources.from_dict(self.worker_size),
                server_costs=_costs_from_event(self.server_costs),
                idle_timeout_seconds=self.idle_timeout_seconds,
            )

    class ServerStarted(Event):
        TOPIC = "allocation-ledger:pool:server-started"
        name: str
        port: int

        def apply(self, aggregate: Pool) -> None:
            aggregate.servers[self.name] = ServerInstance(
                name=self.name,
                port=self.port,
                references=0,
                started_at=self.timestamp,
                idle_since=self.timestamp,
            )

    class Reserved(Event):
        TOPIC = "allocation-ledger:pool:reserved"
        allocation_id: str
        resources: dict[str, int]
        worker_ports: list[int]
        servers: list[str]
        expires_at: datetime

        def apply(self, aggregate: Pool) -> None:
            reservation = Reservation(
                allocation_id=self.allocation_id,
                resources=Resources.from_dict(self.resources),
                worker_ports=tuple(self.worker_ports),
                servers=tuple(self.servers),
                expires_at=self.expires_at,
            )
            aggregate.reservations[self.allocation_id] = reservation
            aggregate.reserved = aggregate.reserved + reservation.resources
            aggregate.worker_ports.update(reservation.worker_ports)
            for name in reservation.servers:
                server = aggregate.servers[name]
                aggregate.servers[name] = replace(
                    server, references=server.references + 1, idle_since=None
                )

    class LeaseExtended(Event):
        TOPIC = "allocation-ledger:pool:lease-extended"
        allocation_id: str
        expires_at: datetime

        def apply(self, aggregate: Pool) -> None:
            reservation = aggregate.reservations[self.allocation_id]
            aggregate.reservations[self.allocation_id] = replace(
                reservation, expires_at=self.expires_at
            )

    class Freed(Event):
        """Capacity given back; repeats what was held so read models need no lookup."""

        TOPIC = "allocation-ledger:pool:freed"
        allocation_id: str
        outcome: str
        resources: dict[str, int]
        worker_ports: list[int]
        servers: list[str]

        def apply(self, aggregate: Pool) -> None:
            reservation = aggregate.reservations.pop(self.allocation_id)
            aggregate.reserved = aggregate.reserved - reservation.resources
            aggregate.worker_ports.difference_update(reservation.worker_ports)
            for name in reservation.servers:
                server = aggregate.servers[name]
                references = server.references - 1
                aggregate.servers[name] = replace(
                    server,
                    references=references,
                    idle_since=self.timestamp if references == 0 else None,
                )

    class ServerStopped(Event):
        TOPIC = "allocation-ledger:pool:server-stopped"
        name: str
        port: int

        def apply(self, aggregate: Pool) -> None:
            del aggregate.servers[self.name]

    def __init__(self) -> None:
        self.name = ""
        self.settings = PoolSettings()
        self.reserved = Resources()
        self.reservations: dict[str, Reservation] = {}
        self.servers: dict[str, ServerInstance] = {}
        self.worker_ports: set[int] = set()

    # -- creation and configuration ------------------------------------------

    @classmethod
    def create(
        cls, name: str, settings: PoolSettings, *, at: datetime, actor: str
    ) -> Pool:
        return cls._create(
            cls.Created,
            id=pool_uuid(name),
            timestamp=at,
            actor=actor,
            name=name,
            capacity=settings.capacity.as_dict(),
            worker_size=settings.worker_size.as_dict(),
            server_costs=_costs_to_event(settings.server_costs),
            idle_timeout_seconds=settings.idle_timeout_seconds,
        )

    def change_capacity(self, capacity: Resources, *, at: datetime, actor: str) -> bool:
        """Set the totals. Lowering never evicts; it only refuses new requests."""
        if capacity == self.settings.capacity:
            return False
        self.trigger_event(
            self.CapacityChanged, timestamp=at, actor=actor, capacity=capacity.as_dict()
        )
        return True

    def reconfigure(self, settings: PoolSettings, *, at: datetime, actor: str) -> bool:
        current = self.settings
        if (
            settings.worker_size == current.worker_size
            and _costs_to_event(settings.server_costs)
            == _costs_to_event(current.server_costs)
            and settings.idle_timeout_seconds == current.idle_timeout_seconds
        ):
            return False
        self.trigger_event(
            self.Reconfigured,
            timestamp=at,
            actor=actor,
            worker_size=settings.worker_size.as_dict(),
            server_costs=_costs_to_event(settings.server_costs),
            idle_timeout_seconds=settings.idle_timeout_seconds,
        )
        return True

    # -- queries the decisions rest on ---------------------------------------

    @property
    def available(self) -> Resources:
        return self.settings.capacity - self.reserved

    def free_mcp_ports(self) -> int:
        return MCP_PORT_LAST - MCP_PORT_FIRST + 1 - len(self.servers)

    def shortfall(self, request: AllocationRequest) -> Rejection | None:
        """The first dimension the request does not fit in, or None if it fits.

        A dimension the request needs none of never refuses it, even when the
        pool is over-committed after its capacity was lowered.
        """
        needed = self.settings.resources_for(request)
        available = self.available
        for dimension in (Dimension.WORKERS, Dimension.CPU, Dimension.MEMORY):
            wanted = needed.amount(dimension)
            left = available.amount(dimension)
            if wanted > 0 and wanted > left:
                return Rejection(INSUFFICIENT_CAPACITY, dimension, wanted, max(left, 0))
        new_servers = [n for n in request.servers if n not in self.servers]
        reclaimable = [
            s
            for s in self.servers.values()
            if s.references == 0 and s.name not in request.servers
        ]
        ports_left = self.free_mcp_ports() + len(reclaimable)
        if len(new_servers) > ports_left:
            return Rejection(
                INSUFFICIENT_CAPACITY, Dimension.MCP_PORTS, len(new_servers), ports_left
            )
        return None

    def due(self, now: datetime) -> list[Reservation]:
        """Live reservations whose lease ran out, in (expires_at, id) order."""
        due = [r for r in self.reservations.values() if r.expires_at <= now]
        due.sort(key=lambda r: (r.expires_at, r.allocation_id))
        return due

    def idle_servers_due(self, now: datetime) -> list[ServerInstance]:
        """Idle servers whose idle timeout passed, oldest idle first."""
        timeout = timedelta(seconds=self.settings.idle_timeout_seconds)
        due = [
            s
            for s in self.servers.values()
            if s.idle_since is not None and s.idle_since + timeout <= now
        ]
        due.sort(key=lambda s: (s.idle_since or now, s.name))
        return due

    # -- decisions -----------------------------------------------------------

    def reserve(
        self,
        allocation_id: str,
        request: AllocationRequest,
        *,
        expires_at: datetime,
        at: datetime,
        actor: str,
    ) -> ReservedPorts:
        """Hold capacity and ports for a request that fits (check `shortfall` first)."""
        rejection = self.shortfall(request)
        if rejection is not None:
            msg = f"reserve() called for a request that does not fit: {rejection}"
            raise ValueError(msg)
        servers: list[tuple[str, int, bool]] = []
        stopped: list[tuple[str, int]] = []
        for name in request.servers:
            running = self.servers.get(name)
            if running is not None:
                servers.append((name, running.port, False))
                continue
            if self.free_mcp_ports() == 0:
                stopped.append(
                    self._stop_longest_idle(keep=request.servers, at=at, actor=actor)
                )
            port = self._lowest_free_mcp_port()
            self.trigger_event(
                self.ServerStarted, timestamp=at, actor=actor, name=name, port=port
            )
            servers.append((name, port, True))
        worker_ports = self._lowest_free_worker_ports(request.workers)
        self.trigger_event(
            self.Reserved,
            timestamp=at,
            actor=actor,
            allocation_id=allocation_id,
            resources=self.settings.resources_for(request).as_dict(),
            worker_ports=list(worker_ports),
            servers=list(request.servers),
            expires_at=expires_at,
        )
        return ReservedPorts(tuple(worker_ports), tuple(servers), tuple(stopped))

    def extend_lease(
        self, allocation_id: str, expires_at: datetime, *, at: datetime, actor: str
    ) -> None:
        if allocation_id not in self.reservations:
            msg = f"pool {self.name!r} holds no reservation for {allocation_id}"
            raise KeyError(msg)
        self.trigger_event(
            self.LeaseExtended,
            timestamp=at,
            actor=actor,
            allocation_id=allocation_id,
            expires_at=expires_at,
        )

    def free(
        self, allocation_id: str, outcome: str, *, at: datetime, actor: str
    ) -> bool:
        """Give back what an allocation held. False if it held nothing here."""
        reservation = self.reservations.get(allocation_id)
        if reservation is None:
            return False
        self.trigger_event(
            self.Freed,
            timestamp=at,
            actor=actor,
            allocation_id=allocation_id,
            outcome=outcome,
            resources=reservation.resources.as_dict(),
            worker_ports=list(reservation.worker_ports),
            servers=list(reservation.servers),
        )
        return True

    def stop_idle_servers(self, now: datetime, *, actor: str) -> list[ServerInstance]:
        stopped = self.idle_servers_due(now)
        for server in stopped:
            self.trigger_event(
                self.ServerStopped,
                timestamp=now,
                actor=actor,
                name=server.name,
                port=server.port,
            )
        return stopped

    # -- internals -------------------------------------------------------------

    def _stop_longest_idle(
        self, *, keep: Iterable[str], at: datetime, actor: str
    ) -> tuple[str, int]:
        kept = set(keep)
        idle = [
            s
            for s in self.servers.values()
            if s.references == 0 and s.name not in kept and s.idle_since is not None
        ]
        idle.sort(key=lambda s: (s.idle_since or at, s.name))
        server = idle[0]
        self.trigger_event(
            self.ServerStopped,
            timestamp=at,
            actor=actor,
            name=server.name,
            port=server.port,
        )
        return server.name, server.port

    def _lowest_free_mcp_port(self) -> int:
        used = {s.port for s in self.servers.values()}
        for port in range(MCP_PORT_FIRST, MCP_PORT_LAST + 1):
            if port not in used:
                return port
        msg = "no free MCP server port"  # shortfall() rules this out
        raise RuntimeError(msg)

    def _lowest_free_worker_ports(self, count: int) -> list[int]:
        ports: list[int] = []
        port = WORKER_PORT_FIRST
        while len(ports) < count:
            if port not in self.worker_ports:
                ports.append(port)
            port += 1
        return ports
