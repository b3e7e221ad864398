"""The folds: how each event changes a read model.

One function per read model. The live read models and every replay (rebuild,
point-in-time capacity, verify) use these same functions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import worker_id
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.scheduling import DEFAULT_PREEMPTION, cross_tenant_of
from allocation_ledger.domain.values import AllocationState, Resources
from allocation_ledger.projections.views import (
    AllocationView,
    CapacityView,
    QueuedView,
    ServerUseView,
    ServerView,
    WorkerView,
)


def _requested(event: Allocation.Requested) -> AllocationView:
    request = event.request
    return AllocationView(
        allocation_id=event.allocation_id,
        pool=event.pool,
        job_id=request["job_id"],
        state=AllocationState.PENDING.value,
        priority=request["priority"],
        workers_requested=request["workers"],
        servers_requested=list(request["servers"]),
        ttl_seconds=request["ttl_seconds"],
        metadata=request["metadata"],
        request_id=event.request_id,
        resources=Resources.from_dict(event.resources),
        workers=[
            WorkerView(worker_id(event.allocation_id, i), port)
            for i, port in enumerate(event.worker_ports)
        ],
        servers=[
            ServerUseView(str(name), int(port), bool(started))
            for name, port, started in event.servers
        ],
        created_at=event.timestamp,
        # Held from the request unless a Queued or Rejected follows it.
        reserved_at=event.timestamp,
        requested_by=event.actor,
        updated_at=event.timestamp,
        expires_at=event.expires_at,
        last_actor=event.actor,
        version=event.originator_version,
        tenant=event.tenant,
    )


def _rejected(view: AllocationView, event: Allocation.Rejected) -> None:
    view.state = _FAILED
    view.rejection = dict(event.reason)
    view.expires_at = None
    view.ended_at = event.timestamp
    view.reserved_at = None  # refused, or timed out in the queue: held nothing


def _queued(view: AllocationView, event: Allocation.Queued) -> None:
    view.state = AllocationState.QUEUED.value
    view.queue_deadline = event.deadline
    view.waiting_for = dict(event.reason)
    view.expires_at = None
    view.reserved_at = None  # waits holding nothing


def _granted(view: AllocationView, event: Allocation.Granted) -> None:
    view.state = AllocationState.PENDING.value
    if event.resources is not None:
        view.resources = Resources.from_dict(event.resources)
    view.workers = [
        WorkerView(worker_id(view.allocation_id, i), port)
        for i, port in enumerate(event.worker_ports)
    ]
    view.servers = [
        ServerUseView(str(name), int(port), bool(started))
        for name, port, started in event.servers
    ]
    view.expires_at = event.expires_at
    view.queue_deadline = None
    view.reserved_at = event.timestamp


def _preempted(view: AllocationView, event: Allocation.Preempted) -> None:
    view.state = AllocationState.PREEMPTED.value
    view.preempted_by = event.by
    view.ended_at = event.timestamp


def _activated(view: AllocationView, event: Allocation.Activated) -> None:
    view.state = _ACTIVE
    view.activated_at = event.timestamp
    view.expires_at = event.expires_at
    worker_endpoints = event.worker_endpoints
    for worker in view.workers:
        worker.endpoint = worker_endpoints.get(worker.worker_id)
    server_endpoints = event.server_endpoints
    for server in view.servers:
        server.endpoint = server_endpoints.get(server.name)


def _renewed(view: AllocationView, event: Allocation.Renewed) -> None:
    view.expires_at = event.expires_at
    view.renewals += 1


def _release_requested(
    view: AllocationView, event: Allocation.ReleaseRequested
) -> None:
    view.state = AllocationState.RELEASING.value
    view.release_requested_at = event.timestamp


def _released(view: AllocationView, event: Allocation.Released) -> None:
    view.state = AllocationState.RELEASED.value
    view.ended_at = event.timestamp


def _expired(view: AllocationView, event: Allocation.Expired) -> None:
    view.state = AllocationState.EXPIRED.value
    view.ended_at = event.timestamp


def _failed(view: AllocationView, event: Allocation.Failed) -> None:
    view.state = _FAILED
    view.error = event.error
    view.ended_at = event.timestamp


def _no_change(view: object, event: object) -> None:
    """An event that only moves the row's time, actor and version."""


_FAILED = AllocationState.FAILED.value
_ACTIVE = AllocationState.ACTIVE.value
_ALLOCATION_FOLDS: dict[type[Any], Callable[[Any, Any], None]] = {
    Allocation.Rejected: _rejected,
    Allocation.Queued: _queued,
    Allocation.Granted: _granted,
    Allocation.Preempted: _preempted,
    Allocation.Activated: _activated,
    Allocation.Renewed: _renewed,
    Allocation.ReleaseRequested: _release_requested,
    Allocation.Released: _released,
    Allocation.Expired: _expired,
    Allocation.Failed: _failed,
}


def fold_of(
    folds: dict[type[Any], Callable[[Any, Any], None]], kind: type[Any]
) -> Callable[[Any, Any], None]:
    """The fold of an event class: its own, else its nearest base's (cached)."""
    found = folds.get(kind)
    if found is None:
        found = next((folds[base] for base in kind.__mro__ if base in folds), None)
        folds[kind] = found = found or _no_change
    return found


def fold_allocation(
    view: AllocationView | None, event: Allocation.Event
) -> AllocationView:
    """Apply one Allocation event to its listing row (mutated and returned).

    Each event class has its fold (found by its class, not a chain of
    isinstance tests: a rebuild folds hundreds of thousands of them).
    Raises ValueError when an event other than the request comes first.
    """
    if isinstance(event, Allocation.Requested):
        return _requested(event)
    if view is None:
        msg = f"{type(event).__qualname__} arrived before the allocation's request"
        raise ValueError(msg)
    view.updated_at = event.timestamp
    view.last_actor = event.actor
    view.version = event.originator_version
    fold = _ALLOCATION_FOLDS.get(type(event))
    if fold is None:
        fold = fold_of(_ALLOCATION_FOLDS, type(event))
    fold(view, event)
    return view


def _created(event: Pool.Created) -> CapacityView:
    return CapacityView(
        pool=event.name,
        total=Resources.from_dict(event.capacity),
        reserved=Resources(),
        worker_size=Resources.from_dict(event.worker_size),
        idle_timeout_seconds=event.idle_timeout_seconds,
        updated_at=event.timestamp,
        version=event.originator_version,
        preemption={k: list(v) for k, v in DEFAULT_PREEMPTION.items()},
        cross_tenant_preemption=cross_tenant_of(event.cross_tenant_preemption).value,
        ports=PortRanges(**event.ports) if event.ports else PortRanges(),
    )


def _capacity_changed(view: CapacityView, event: Pool.CapacityChanged) -> None:
    view.total = Resources.from_dict(event.capacity)


def _reconfigured(view: CapacityView, event: Pool.Reconfigured) -> None:
    view.worker_size = Resources.from_dict(event.worker_size)
    view.idle_timeout_seconds = event.idle_timeout_seconds


def _ports_changed(view: CapacityView, event: Pool.PortsChanged) -> None:
    view.ports = PortRanges(**event.ports)


def _server_started(view: CapacityView, event: Pool.ServerStarted) -> None:
    cost = None if event.cost is None else Resources.from_dict(event.cost)
    view.servers[event.name] = ServerView(
        name=event.name,
        port=event.port,
        references=0,
        started_at=event.timestamp,
        idle_since=event.timestamp,
        cost=cost,
    )
    if cost is not None:
        view.reserved = view.reserved + cost


def _server_charged(view: CapacityView, event: Pool.ServerCharged) -> None:
    cost = Resources.from_dict(event.cost)
    view.servers[event.name].cost = cost
    view.reserved = view.reserved + cost


def _plus(resources: Resources, amounts: dict[str, int]) -> Resources:
    """`resources + Resources.from_dict(amounts)`, making one Resources, not
    two (a rebuild adds and takes back every allocation's amounts)."""
    return Resources(
        resources.cpu_millicores + amounts["cpu_millicores"],
        resources.memory_mib + amounts["memory_mib"],
        resources.workers + amounts["workers"],
    )


def _minus(resources: Resources, amounts: dict[str, int]) -> Resources:
    """`resources - Resources.from_dict(amounts)`, making one Resources."""
    return Resources(
        resources.cpu_millicores - amounts["cpu_millicores"],
        resources.memory_mib - amounts["memory_mib"],
        resources.workers - amounts["workers"],
    )


def _reserved(view: CapacityView, event: Pool.Reserved) -> None:
    view.reserved = _plus(view.reserved, event.resources)
    if event.tenant is not None:
        held = view.held_by_tenant.get(event.tenant, Resources())
        view.held_by_tenant[event.tenant] = _plus(held, event.resources)
    view.live_allocations += 1
    view.worker_ports_in_use += len(event.worker_ports)
    servers = view.servers
    for name in event.servers:
        # Changed in place: a batch's rows are its own (stores hand out copies).
        server = servers[name]
        server.references += 1
        server.idle_since = None


def _freed(view: CapacityView, event: Pool.Freed) -> None:
    view.reserved = _minus(view.reserved, event.resources)
    if event.tenant is not None:
        left = _minus(
            view.held_by_tenant.get(event.tenant, Resources()), event.resources
        )
        if left == Resources():
            view.held_by_tenant.pop(event.tenant, None)
        else:
            view.held_by_tenant[event.tenant] = left
    view.live_allocations -= 1
    view.worker_ports_in_use -= len(event.worker_ports)
    servers = view.servers
    for name in event.servers:
        server = servers[name]
        server.references -= 1
        server.idle_since = event.timestamp if server.references == 0 else None


def _server_stopped(view: CapacityView, event: Pool.ServerStopped) -> None:
    view.servers.pop(event.name, None)
    if event.cost is not None:
        view.reserved = view.reserved - Resources.from_dict(event.cost)


def _enqueued(view: CapacityView, event: Pool.Enqueued) -> None:
    request = event.request
    view.arrivals += 1
    view.queue[event.allocation_id] = QueuedView(
        allocation_id=event.allocation_id,
        job_id=request["job_id"],
        priority=request["priority"],
        workers=request["workers"],
        servers=list(request["servers"]),
        resources=(
            Resources.from_dict(event.resources)
            if event.resources is not None
            else Resources(
                view.worker_size.cpu_millicores * request["workers"],
                view.worker_size.memory_mib * request["workers"],
                request["workers"],
            )
        ),
        arrival=view.arrivals,
        enqueued_at=event.timestamp,
        deadline=event.deadline,
        tenant=event.tenant,
    )


def _dequeued(view: CapacityView, event: Pool.Dequeued) -> None:
    view.queue.pop(event.allocation_id, None)


def _quota_set(view: CapacityView, event: Pool.QuotaSet) -> None:
    if event.limits is None:
        view.quotas.pop(event.tenant, None)
    else:
        view.quotas[event.tenant] = Resources.from_dict(event.limits)


def _scheduling_configured(
    view: CapacityView, event: Pool.SchedulingConfigured
) -> None:
    view.queue_policy = event.queue_policy
    view.aging_seconds = event.aging_seconds
    view.preemption = {k: list(v) for k, v in event.preemption.items()}
    view.cross_tenant_preemption = cross_tenant_of(event.cross_tenant_preemption).value


_CAPACITY_FOLDS: dict[type[Any], Callable[[Any, Any], None]] = {
    Pool.CapacityChanged: _capacity_changed,
    Pool.Reconfigured: _reconfigured,
    Pool.PortsChanged: _ports_changed,
    Pool.ServerStarted: _server_started,
    Pool.ServerCharged: _server_charged,
    Pool.Reserved: _reserved,
    Pool.Freed: _freed,
    Pool.ServerStopped: _server_stopped,
    Pool.Enqueued: _enqueued,
    Pool.Dequeued: _dequeued,
    Pool.QuotaSet: _quota_set,
    Pool.SchedulingConfigured: _scheduling_configured,
}


def fold_capacity(view: CapacityView | None, event: Pool.Event) -> CapacityView:
    """Apply one Pool event to the pool's capacity view (mutated and returned).

    Raises ValueError when an event other than the creation comes first.
    """
    if isinstance(event, Pool.Created):
        return _created(event)
    if view is None:
        msg = f"{type(event).__qualname__} arrived before the pool was created"
        raise ValueError(msg)
    view.updated_at = event.timestamp
    view.version = event.originator_version
    fold = _CAPACITY_FOLDS.get(type(event))
    if fold is None:
        fold = fold_of(_CAPACITY_FOLDS, type(event))
    fold(view, event)
    return view
