"""The Pool aggregate: the consistency boundary for a pool's capacity.

Every decision that takes or gives back capacity is made here, against the
pool's current version; a concurrent writer loses on that version.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from allocation_ledger.domain.capacity import shortfall
from allocation_ledger.domain.pool_settings import (
    PoolSettings,
    costs_from_event,
    costs_to_event,
)
from allocation_ledger.domain.pool_state import (
    QueueEntry,
    Reservation,
    ReservedPorts,
    ServerInstance,
)
from allocation_ledger.domain.ports import (
    PortRanges,
    free_mcp_ports,
    lowest_free_mcp_port,
    lowest_free_worker_ports,
)
from allocation_ledger.domain.queueing import next_to_grant, waiting_ahead
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import (
    AllocationRequest,
    Priority,
    QueuePolicy,
    Rejection,
    Resources,
)

DEFAULT_POOL = "default"


def pool_uuid(name: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"allocation-ledger:pool:{name}")


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
        ports: dict[str, int] | None = None

        def apply(self, aggregate: Pool) -> None:
            aggregate.name = self.name
            aggregate.ports = PortRanges(**self.ports) if self.ports else PortRanges()
            aggregate.settings = PoolSettings(
                capacity=Resources.from_dict(self.capacity),
                worker_size=Resources.from_dict(self.worker_size),
                server_costs=costs_from_event(self.server_costs),
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
                server_costs=costs_from_event(self.server_costs),
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
        priority: str = Priority.NORMAL.value
        tenant: str | None = None

        def apply(self, aggregate: Pool) -> None:
            reservation = Reservation(
                allocation_id=self.allocation_id,
                resources=Resources.from_dict(self.resources),
                worker_ports=tuple(self.worker_ports),
                servers=tuple(self.servers),
                expires_at=self.expires_at,
                priority=Priority(self.priority),
                tenant=self.tenant,
                reserved_at=self.timestamp,
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
        tenant: str | None = None

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

    class SchedulingConfigured(Event):
        TOPIC = "allocation-ledger:pool:scheduling-configured"
        queue_policy: str
        aging_seconds: int
        preemption: dict[str, list[str]]

        def apply(self, aggregate: Pool) -> None:
            aggregate.scheduling = Scheduling(
                queue_policy=QueuePolicy(self.queue_policy),
                aging_seconds=self.aging_seconds,
                preemption={k: tuple(v) for k, v in self.preemption.items()},
            )

    class QuotaSet(Event):
        """A tenant's limit on what it may hold at once here (none: no limit)."""

        TOPIC = "allocation-ledger:pool:quota-set"
        tenant: str
        limits: dict[str, int] | None

        def apply(self, aggregate: Pool) -> None:
            if self.limits is None:
                aggregate.quotas.pop(self.tenant, None)
            else:
                aggregate.quotas[self.tenant] = Resources.from_dict(self.limits)

    class Enqueued(Event):
        TOPIC = "allocation-ledger:pool:enqueued"
        allocation_id: str
        request: dict[str, Any]
        deadline: datetime | None
        tenant: str | None
        resources: dict[str, int] | None = None

        def apply(self, aggregate: Pool) -> None:
            aggregate.arrivals += 1
            aggregate.queue[self.allocation_id] = QueueEntry(
                allocation_id=self.allocation_id,
                request=AllocationRequest.restore(self.request),
                arrival=aggregate.arrivals,
                enqueued_at=self.timestamp,
                deadline=self.deadline,
                tenant=self.tenant,
            )

    class Dequeued(Event):
        """Left the queue: granted, timed out or cancelled."""

        TOPIC = "allocation-ledger:pool:dequeued"
        allocation_id: str
        outcome: str

        def apply(self, aggregate: Pool) -> None:
            del aggregate.queue[self.allocation_id]

    class_version = 3

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """Snapshots taken before scheduling existed."""
        state["scheduling"] = Scheduling()
        state["queue"] = {}
        state["arrivals"] = 0
        state["quotas"] = {}

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        """Snapshots taken before pools had port ranges of their own."""
        state["ports"] = PortRanges()

    def __init__(self) -> None:
        self.name = ""
        self.settings = PoolSettings()
        self.reserved = Resources()
        self.reservations: dict[str, Reservation] = {}
        self.servers: dict[str, ServerInstance] = {}
        self.worker_ports: set[int] = set()
        self.scheduling = Scheduling()
        self.queue: dict[str, QueueEntry] = {}
        self.arrivals = 0
        self.quotas: dict[str, Resources] = {}
        self.ports = PortRanges()

    # -- creation and configuration ------------------------------------------

    @classmethod
    def create(
        cls,
        name: str,
        settings: PoolSettings,
        *,
        at: datetime,
        actor: str,
        ports: PortRanges | None = None,
    ) -> Pool:
        return cls._create(
            cls.Created,
            id=pool_uuid(name),
            timestamp=at,
            actor=actor,
            name=name,
            capacity=settings.capacity.as_dict(),
            worker_size=settings.worker_size.as_dict(),
            server_costs=costs_to_event(settings.server_costs),
            idle_timeout_seconds=settings.idle_timeout_seconds,
            ports=(ports or PortRanges()).as_dict(),
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
            and costs_to_event(settings.server_costs)
            == costs_to_event(current.server_costs)
            and settings.idle_timeout_seconds == current.idle_timeout_seconds
        ):
            return False
        self.trigger_event(
            self.Reconfigured,
            timestamp=at,
            actor=actor,
            worker_size=settings.worker_size.as_dict(),
            server_costs=costs_to_event(settings.server_costs),
            idle_timeout_seconds=settings.idle_timeout_seconds,
        )
        return True

    # -- queries the decisions rest on ---------------------------------------

    @property
    def available(self) -> Resources:
        return self.settings.capacity - self.reserved

    def free_mcp_ports(self) -> int:
        """MCP ports in this pool's range not taken by a running or idle server."""
        return free_mcp_ports(self.ports, len(self.servers))

    def shortfall(
        self, request: AllocationRequest, *, freeing: Iterable[Reservation] = ()
    ) -> Rejection | None:
        """The first dimension the request does not fit in, or None if it fits
        (`capacity.shortfall`; `freeing`: reservations to count as given back)."""
        needed = self.settings.resources_for(request)
        return shortfall(self, request, needed, freeing=freeing)

    def waiting_ahead(
        self, request: AllocationRequest, now: datetime
    ) -> Rejection | None:
        """Why a newcomer must wait behind the queue under the strict policy,
        or None when it may go ahead (`queueing.waiting_ahead`)."""
        needed = self.settings.resources_for(request)
        return waiting_ahead(self, request, needed, now)

    def next_to_grant(self, now: datetime) -> QueueEntry | None:
        """The queued request to grant now, if any (`queueing.next_to_grant`)."""
        return next_to_grant(self, now)

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
        tenant: str | None = None,
        resources: Resources | None = None,
    ) -> ReservedPorts:
        """Hold capacity and ports for a request that fits (check `shortfall` first).

        `resources`: what it holds (`settings.resources_for(request)`), if the
        caller worked it out already. Raises ValueError if it does not fit.
        """
        needed = (
            self.settings.resources_for(request) if resources is None else resources
        )
        rejection = shortfall(self, request, needed)
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
            port = lowest_free_mcp_port(
                self.ports, (s.port for s in self.servers.values())
            )
            self.trigger_event(
                self.ServerStarted, timestamp=at, actor=actor, name=name, port=port
            )
            servers.append((name, port, True))
        worker_ports = lowest_free_worker_ports(
            self.ports, self.worker_ports, request.workers
        )
        self.trigger_event(
            self.Reserved,
            timestamp=at,
            actor=actor,
            allocation_id=allocation_id,
            resources=needed.as_dict(),
            worker_ports=list(worker_ports),
            servers=list(request.servers),
            expires_at=expires_at,
            priority=request.priority.value,
            tenant=tenant,
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
            tenant=reservation.tenant,
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

    def enqueue(
        self,
        allocation_id: str,
        request: AllocationRequest,
        *,
        deadline: datetime | None,
        tenant: str | None,
        at: datetime,
        actor: str,
        resources: Resources | None = None,
    ) -> None:
        """Put a request that holds nothing in the queue, behind those waiting.

        `deadline`: when it times out (None: never); `resources`: what it
        will hold once granted, if the caller worked it out already.
        """
        needed = (
            self.settings.resources_for(request) if resources is None else resources
        )
        self.trigger_event(
            self.Enqueued,
            timestamp=at,
            actor=actor,
            allocation_id=allocation_id,
            request=request.as_dict(),
            deadline=deadline,
            tenant=tenant,
            resources=needed.as_dict(),
        )

    def dequeue(
        self, allocation_id: str, outcome: str, *, at: datetime, actor: str
    ) -> bool:
        if allocation_id not in self.queue:
            return False
        self.trigger_event(
            self.Dequeued,
            timestamp=at,
            actor=actor,
            allocation_id=allocation_id,
            outcome=outcome,
        )
        return True

    def configure_scheduling(
        self, scheduling: Scheduling, *, at: datetime, actor: str
    ) -> bool:
        if scheduling == self.scheduling:
            return False
        self.trigger_event(
            self.SchedulingConfigured,
            timestamp=at,
            actor=actor,
            queue_policy=scheduling.queue_policy.value,
            aging_seconds=scheduling.aging_seconds,
            preemption={k: list(v) for k, v in sorted(scheduling.preemption.items())},
        )
        return True

    def set_quota(
        self, tenant: str, limits: Resources | None, *, at: datetime, actor: str
    ) -> bool:
        if self.quotas.get(tenant) == limits:
            return False
        self.trigger_event(
            self.QuotaSet,
            timestamp=at,
            actor=actor,
            tenant=tenant,
            limits=None if limits is None else limits.as_dict(),
        )
        return True

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
