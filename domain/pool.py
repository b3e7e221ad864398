"""The Pool aggregate: the consistency boundary for a pool's capacity.

One Pool per capacity pool (`default` unless configured). It holds the
pool's settings, the live reservations, the running MCP servers, the worker
ports in use, the queue of waiting requests, the tenants' quotas and the
scheduling settings. This module has its events (each with the stable TOPIC
stored history names) and how each changes that state; the commands that
trigger them are in pool_decisions.py (`PoolDecisions`, mixed in here).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

from allocation_ledger.domain.pool_decisions import PoolDecisions
from allocation_ledger.domain.pool_settings import (
    PoolSettings,
    costs_from_event,
    costs_to_event,
    timeouts_to_event,
)
from allocation_ledger.domain.pool_state import (
    QueueEntry,
    Reservation,
    ServerInstance,
)
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.scheduling import (
    CrossTenantPreemption,
    Scheduling,
    cross_tenant_of,
)
from allocation_ledger.domain.values import (
    AllocationRequest,
    Priority,
    QueuePolicy,
    Resources,
)

DEFAULT_POOL = "default"


def pool_uuid(name: str) -> UUID:
    """The Pool aggregate's id, derived from its name: no lookup table needed."""
    return uuid5(NAMESPACE_URL, f"allocation-ledger:pool:{name}")


class Pool(PoolDecisions, Aggregate):
    """A capacity pool: its events and state here, its commands in PoolDecisions."""

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
        # Per MCP server, where the catalog gives one; None in older histories.
        server_idle_timeouts: dict[str, int] | None = None
        # The pool's cross-tenant preemption from the start; None in histories
        # older than the setting: they read as `over_quota`, as new pools
        # start (scheduling.cross_tenant_of).
        cross_tenant_preemption: str | None = None

        def apply(self, aggregate: Pool) -> None:
            aggregate.name = self.name
            aggregate.scheduling = replace(
                aggregate.scheduling,
                cross_tenant_preemption=cross_tenant_of(self.cross_tenant_preemption),
            )
            aggregate.ports = PortRanges(**self.ports) if self.ports else PortRanges()
            aggregate.settings = PoolSettings(
                capacity=Resources.from_dict(self.capacity),
                worker_size=Resources.from_dict(self.worker_size),
                server_costs=costs_from_event(self.server_costs),
                idle_timeout_seconds=self.idle_timeout_seconds,
                server_idle_timeouts=self.server_idle_timeouts or None,
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
        # Per MCP server, where the catalog gives one; None in older histories.
        server_idle_timeouts: dict[str, int] | None = None

        def apply(self, aggregate: Pool) -> None:
            aggregate.settings = replace(
                aggregate.settings,
                worker_size=Resources.from_dict(self.worker_size),
                server_costs=costs_from_event(self.server_costs),
                idle_timeout_seconds=self.idle_timeout_seconds,
                server_idle_timeouts=self.server_idle_timeouts or None,
            )

    class PortsChanged(Event):
        """New port ranges, for the ports handed out from now on (ports live
        allocations hold outside them stay theirs until given back)."""

        TOPIC = "allocation-ledger:pool:ports-changed"
        ports: dict[str, int]

        def apply(self, aggregate: Pool) -> None:
            aggregate.ports = PortRanges(**self.ports)

    class ServerStarted(Event):
        """An MCP server instance started (its process is started after the
        commit). `cost`: what the instance reserves in the pool while it
        runs, idle or not, until it stops; None in histories written before
        instances held their cost (then each allocation naming it was
        charged the cost in its `Reserved` amounts)."""

        TOPIC = "allocation-ledger:pool:server-started"
        name: str
        port: int
        cost: dict[str, int] | None = None

        def apply(self, aggregate: Pool) -> None:
            cost = None if self.cost is None else Resources.from_dict(self.cost)
            aggregate.servers[self.name] = ServerInstance(
                name=self.name,
                port=self.port,
                references=0,
                started_at=self.timestamp,
                idle_since=self.timestamp,
                cost=cost,
            )
            if cost is not None:
                aggregate.reserved = aggregate.reserved + cost

    class ServerCharged(Event):
        """An instance started before instances held their cost now holds
        `cost` (what the catalog gives it now): the first allocation
        attaching to it under the per-instance rule reserved it."""

        TOPIC = "allocation-ledger:pool:server-charged"
        name: str
        cost: dict[str, int]

        def apply(self, aggregate: Pool) -> None:
            cost = Resources.from_dict(self.cost)
            server = aggregate.servers[self.name]
            aggregate.servers[self.name] = replace(server, cost=cost)
            aggregate.reserved = aggregate.reserved + cost

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
        """An MCP server instance stopped (its process is stopped after the
        commit); its port and what it reserved are free again. `reason`:
        idle (its idle timeout passed), reclaimed (stopped for room for a
        request), out_of_range (outside new port ranges), start_failed,
        start_abandoned, unstartable; None in older histories. `cost`: what
        it gave back (repeats what it held, so read models need no lookup);
        None when it held nothing of its own."""

        TOPIC = "allocation-ledger:pool:server-stopped"
        name: str
        port: int
        reason: str | None = None
        cost: dict[str, int] | None = None

        def apply(self, aggregate: Pool) -> None:
            server = aggregate.servers.pop(self.name)
            aggregate.reserved = aggregate.reserved - server.held

    class SchedulingConfigured(Event):
        """The pool's queue policy, aging, preemption rules and cross-tenant
        preemption. `cross_tenant_preemption`: None in histories older than
        the setting, which compared priorities across tenants (`any`)."""

        TOPIC = "allocation-ledger:pool:scheduling-configured"
        queue_policy: str
        aging_seconds: int
        preemption: dict[str, list[str]]
        cross_tenant_preemption: str | None = None

        def apply(self, aggregate: Pool) -> None:
            aggregate.scheduling = Scheduling(
                queue_policy=QueuePolicy(self.queue_policy),
                aging_seconds=self.aging_seconds,
                preemption={k: tuple(v) for k, v in self.preemption.items()},
                cross_tenant_preemption=cross_tenant_of(self.cross_tenant_preemption),
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
        """Left the queue: granted, timed out, refused (it could never be
        granted) or cancelled."""

        TOPIC = "allocation-ledger:pool:dequeued"
        allocation_id: str
        outcome: str

        def apply(self, aggregate: Pool) -> None:
            del aggregate.queue[self.allocation_id]

    class_version = 3

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """Snapshots taken before scheduling existed (so before the
        cross-tenant setting: priorities compared across tenants)."""
        state["scheduling"] = Scheduling(
            cross_tenant_preemption=CrossTenantPreemption.ANY
        )
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
        """A new pool (its Created event): `settings` as given, `ports` its
        ranges (the default pool's when None). Its id is `pool_uuid(name)`."""
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
            server_idle_timeouts=timeouts_to_event(settings.server_idle_timeouts),
            cross_tenant_preemption=Scheduling().cross_tenant_preemption.value,
        )
