"""The Pool's decisions: the commands that change a pool, and what they rest on.

Every decision that takes or gives back capacity, ports or a place in the
queue is made here, against the pool's current version (a concurrent writer
loses on that version), and recorded as one of the Pool's events. The events,
the state they build and the pool's creation are in pool.py; `Pool` is
`PoolDecisions` mixed into an eventsourcing Aggregate. The decisions that
only read the pool are pure functions (capacity.py, queueing.py,
preemption.py, admission.py); the methods here that answer questions are
what other packages and the tests call.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from eventsourcing.domain import Aggregate

from allocation_ledger.domain.capacity import shortfall, to_reclaim
from allocation_ledger.domain.pool_settings import (
    PoolSettings,
    costs_to_event,
    timeouts_to_event,
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
from allocation_ledger.domain.values import AllocationRequest, Rejection, Resources

if TYPE_CHECKING:
    _Aggregate = Aggregate
else:
    _Aggregate = object


class PoolDecisions(_Aggregate):
    """The Pool aggregate's commands (a mixin of `pool.Pool`).

    Each command checks what it must, then triggers one of the Pool's events
    (or several, in order); the events' `apply` changes the state. A command
    that would change nothing triggers nothing and answers False. Times are
    the ledger's clock (`at`, `now`); `actor` is recorded on every event.
    """

    if TYPE_CHECKING:
        # What pool.Pool defines: its state (see Pool.__init__) and events.
        name: str
        settings: PoolSettings
        reserved: Resources
        reservations: dict[str, Reservation]
        servers: dict[str, ServerInstance]
        worker_ports: set[int]
        scheduling: Scheduling
        queue: dict[str, QueueEntry]
        arrivals: int
        quotas: dict[str, Resources]
        ports: PortRanges
        CapacityChanged: ClassVar[type[Aggregate.Event]]
        Reconfigured: ClassVar[type[Aggregate.Event]]
        PortsChanged: ClassVar[type[Aggregate.Event]]
        ServerStarted: ClassVar[type[Aggregate.Event]]
        ServerCharged: ClassVar[type[Aggregate.Event]]
        Reserved: ClassVar[type[Aggregate.Event]]
        LeaseExtended: ClassVar[type[Aggregate.Event]]
        Freed: ClassVar[type[Aggregate.Event]]
        ServerStopped: ClassVar[type[Aggregate.Event]]
        SchedulingConfigured: ClassVar[type[Aggregate.Event]]
        QuotaSet: ClassVar[type[Aggregate.Event]]
        Enqueued: ClassVar[type[Aggregate.Event]]
        Dequeued: ClassVar[type[Aggregate.Event]]

    # -- configuration ---------------------------------------------------------

    def change_capacity(self, capacity: Resources, *, at: datetime, actor: str) -> bool:
        """Set the totals. Lowering never evicts; it only refuses new requests."""
        if capacity == self.settings.capacity:
            return False
        self.trigger_event(
            self.CapacityChanged, timestamp=at, actor=actor, capacity=capacity.as_dict()
        )
        return True

    def reconfigure(self, settings: PoolSettings, *, at: datetime, actor: str) -> bool:
        """Set the worker size, server costs and idle timeout (not the totals:
        `change_capacity`). They apply to reservations made from now on."""
        current = self.settings
        if (
            settings.worker_size == current.worker_size
            and costs_to_event(settings.server_costs)
            == costs_to_event(current.server_costs)
            and settings.idle_timeout_seconds == current.idle_timeout_seconds
            and timeouts_to_event(settings.server_idle_timeouts)
            == timeouts_to_event(current.server_idle_timeouts)
        ):
            return False
        self.trigger_event(
            self.Reconfigured,
            timestamp=at,
            actor=actor,
            worker_size=settings.worker_size.as_dict(),
            server_costs=costs_to_event(settings.server_costs),
            idle_timeout_seconds=settings.idle_timeout_seconds,
            server_idle_timeouts=timeouts_to_event(settings.server_idle_timeouts),
        )
        return True

    def change_ports(
        self, ranges: PortRanges, *, at: datetime, actor: str
    ) -> list[tuple[str, int]]:
        """Hand out ports from `ranges` from now on (checked by the caller:
        `ports.validate_ranges`, and against the other pools). Ports live
        allocations hold outside them stay theirs until given back; an idle
        MCP server outside the new MCP range is recorded stopped now (its
        port is no longer the pool's to keep). Answers the servers stopped
        (name, port); nothing is recorded when the ranges are these already."""
        if ranges == self.ports:
            return []
        stopped: list[tuple[str, int]] = []
        for server in sorted(self.servers.values(), key=lambda s: (s.port, s.name)):
            if server.references == 0 and not ranges.has_mcp_port(server.port):
                self._stop(server, "out_of_range", at=at, actor=actor)
                stopped.append((server.name, server.port))
        self.trigger_event(
            self.PortsChanged, timestamp=at, actor=actor, ports=ranges.as_dict()
        )
        return stopped

    def held_ports(self) -> set[int]:
        """Every port the pool holds now: its servers' and its live workers'."""
        return {s.port for s in self.servers.values()} | set(self.worker_ports)

    # -- what the decisions rest on -------------------------------------------

    @property
    def available(self) -> Resources:
        """Capacity minus what is reserved: live reservations' workers and
        running MCP server instances' costs (negative after a cut)."""
        return self.settings.capacity - self.reserved

    def free_mcp_ports(self) -> int:
        """MCP ports in this pool's range not taken by a running or idle server."""
        return free_mcp_ports(self.ports, (s.port for s in self.servers.values()))

    def shortfall(
        self, request: AllocationRequest, *, freeing: Iterable[Reservation] = ()
    ) -> Rejection | None:
        """The first dimension the request does not fit in, or None if it fits
        (`capacity.shortfall`; `freeing`: reservations to count as given back)."""
        held = self.settings.workers_for(request)
        return shortfall(self, request, held, freeing=freeing)

    def waiting_ahead(
        self, request: AllocationRequest, now: datetime
    ) -> Rejection | None:
        """Why a newcomer must wait behind the queue under the strict policy,
        or None when it may go ahead (`queueing.waiting_ahead`)."""
        held = self.settings.workers_for(request)
        return waiting_ahead(self, request, held, now)

    def next_to_grant(self, now: datetime) -> QueueEntry | None:
        """The queued request to grant now, if any (`queueing.next_to_grant`)."""
        return next_to_grant(self, now)

    def due(self, now: datetime) -> list[Reservation]:
        """Live reservations whose lease ran out, in (expires_at, id) order."""
        due = [r for r in self.reservations.values() if r.expires_at <= now]
        due.sort(key=lambda r: (r.expires_at, r.allocation_id))
        return due

    def idle_servers_due(self, now: datetime) -> list[ServerInstance]:
        """Idle servers whose idle timeout (their own, or the pool's)
        passed, oldest idle first."""
        settings = self.settings
        due = [
            s
            for s in self.servers.values()
            if s.idle_since is not None
            and s.idle_since + timedelta(seconds=settings.idle_timeout_of(s.name))
            <= now
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

        In one decision: the idle MCP servers `capacity.to_reclaim` names
        are stopped (`reclaimed`, longest idle first, only as many as
        needed); each server the request names that has no instance starts,
        reserving its cost (an instance started before instances held their
        cost is charged it); the allocation reserves its workers.
        `resources`: what it holds (`settings.workers_for(request)`), if the
        caller worked it out already. Raises ValueError if it does not fit.
        """
        held = self.settings.workers_for(request) if resources is None else resources
        rejection = shortfall(self, request, held)
        if rejection is not None:
            msg = f"reserve() called for a request that does not fit: {rejection}"
            raise ValueError(msg)
        stopped: list[tuple[str, int]] = []
        for idle in to_reclaim(self, request, held):
            self._stop(idle, "reclaimed", at=at, actor=actor)
            stopped.append((idle.name, idle.port))
        servers: list[tuple[str, int, bool]] = []
        for name in request.servers:
            cost = self.settings.cost_of_server(name)
            running = self.servers.get(name)
            if running is not None:
                if running.cost is None and cost != Resources():
                    self.trigger_event(
                        self.ServerCharged,
                        timestamp=at,
                        actor=actor,
                        name=name,
                        cost=cost.as_dict(),
                    )
                servers.append((name, running.port, False))
                continue
            port = lowest_free_mcp_port(
                self.ports, (s.port for s in self.servers.values())
            )
            self.trigger_event(
                self.ServerStarted,
                timestamp=at,
                actor=actor,
                name=name,
                port=port,
                cost=cost.as_dict(),
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
            resources=held.as_dict(),
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
        """Move a live reservation's lease expiry (a renewal).

        Raises KeyError if the pool holds no reservation for the allocation.
        """
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
        """Give back what an allocation held (its workers; an MCP server it
        was the last to use goes idle and keeps its cost until it stops).
        False if it held nothing here."""
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
        """Stop the MCP servers idle past the idle timeout (their ports and
        costs are free again; reason `idle`); answers those stopped, oldest
        idle first."""
        stopped = self.idle_servers_due(now)
        for server in stopped:
            self._stop(server, "idle", at=now, actor=actor)
        return stopped

    def stop_unused_server(
        self, name: str, *, at: datetime, actor: str, reason: str = "start_failed"
    ) -> int | None:
        """Record the MCP server `name` stopped when no live allocation uses
        it (a start that failed, a process that cannot be brought back): its
        port and cost are free again. `reason`: recorded on the stop. The
        port it had; None when it is not recorded here or still in use (then
        nothing is recorded)."""
        server = self.servers.get(name)
        if server is None or server.references:
            return None
        self._stop(server, reason, at=at, actor=actor)
        return server.port

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
        will hold once granted (its workers), if the caller worked it out
        already.
        """
        needed = self.settings.workers_for(request) if resources is None else resources
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
        """Take a request out of the queue; `outcome`: granted, timed_out,
        refused (it can never be granted here) or cancelled. False if it was
        not queued here."""
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
        """Set the queue policy, aging, preemption rules and cross-tenant
        preemption (checked by
        `scheduling.validate_scheduling` first). False if unchanged."""
        if scheduling == self.scheduling:
            return False
        self.trigger_event(
            self.SchedulingConfigured,
            timestamp=at,
            actor=actor,
            queue_policy=scheduling.queue_policy.value,
            aging_seconds=scheduling.aging_seconds,
            preemption={k: list(v) for k, v in sorted(scheduling.preemption.items())},
            cross_tenant_preemption=scheduling.cross_tenant_preemption.value,
        )
        return True

    def set_quota(
        self, tenant: str, limits: Resources | None, *, at: datetime, actor: str
    ) -> bool:
        """Limit what `tenant` may hold here at once (None: no limit). Evicts
        nothing. False if unchanged."""
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

    def _stop(
        self, server: ServerInstance, reason: str, *, at: datetime, actor: str
    ) -> None:
        """Record `server` stopped for `reason`, giving back its port and cost."""
        self.trigger_event(
            self.ServerStopped,
            timestamp=at,
            actor=actor,
            name=server.name,
            port=server.port,
            reason=reason,
            cost=None if server.cost is None else server.cost.as_dict(),
        )
