"""The folds: how each event changes a read model.

One function per read model. The live read models and every replay (rebuild,
point-in-time capacity, verify) use these same functions.
"""

from __future__ import annotations

from dataclasses import replace

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import worker_id
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.scheduling import DEFAULT_PREEMPTION
from allocation_ledger.domain.values import AllocationState, Resources
from allocation_ledger.projections.views import (
    AllocationView,
    CapacityView,
    QueuedView,
    ServerUseView,
    ServerView,
    WorkerView,
)


def fold_allocation(
    view: AllocationView | None, event: Allocation.Event
) -> AllocationView:
    """Apply one Allocation event to its listing row (mutated and returned)."""
    if isinstance(event, Allocation.Requested):
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
    if view is None:
        msg = f"{type(event).__qualname__} arrived before the allocation's request"
        raise ValueError(msg)
    view.updated_at = event.timestamp
    view.last_actor = event.actor
    view.version = event.originator_version
    if isinstance(event, Allocation.Rejected):
        view.state = AllocationState.FAILED.value
        view.rejection = dict(event.reason)
        view.expires_at = None
        view.ended_at = event.timestamp
        view.reserved_at = None  # refused, or timed out in the queue: held nothing
    elif isinstance(event, Allocation.Queued):
        view.state = AllocationState.QUEUED.value
        view.queue_deadline = event.deadline
        view.waiting_for = dict(event.reason)
        view.expires_at = None
        view.reserved_at = None  # waits holding nothing
    elif isinstance(event, Allocation.Granted):
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
    elif isinstance(event, Allocation.Preempted):
        view.state = AllocationState.PREEMPTED.value
        view.preempted_by = event.by
        view.ended_at = event.timestamp
    elif isinstance(event, Allocation.Activated):
        view.state = AllocationState.ACTIVE.value
        view.activated_at = event.timestamp
        view.expires_at = event.expires_at
        for worker in view.workers:
            worker.endpoint = event.worker_endpoints.get(worker.worker_id)
        for server in view.servers:
            server.endpoint = event.server_endpoints.get(server.name)
    elif isinstance(event, Allocation.Renewed):
        view.expires_at = event.expires_at
        view.renewals += 1
    elif isinstance(event, Allocation.ReleaseRequested):
        view.state = AllocationState.RELEASING.value
        view.release_requested_at = event.timestamp
    elif isinstance(event, Allocation.Released):
        view.state = AllocationState.RELEASED.value
        view.ended_at = event.timestamp
    elif isinstance(event, Allocation.Expired):
        view.state = AllocationState.EXPIRED.value
        view.ended_at = event.timestamp
    elif isinstance(event, Allocation.Failed):
        view.state = AllocationState.FAILED.value
        view.error = event.error
        view.ended_at = event.timestamp
    return view


def fold_capacity(view: CapacityView | None, event: Pool.Event) -> CapacityView:
    """Apply one Pool event to the pool's capacity view (mutated and returned)."""
    if isinstance(event, Pool.Created):
        return CapacityView(
            pool=event.name,
            total=Resources.from_dict(event.capacity),
            reserved=Resources(),
            worker_size=Resources.from_dict(event.worker_size),
            idle_timeout_seconds=event.idle_timeout_seconds,
            updated_at=event.timestamp,
            version=event.originator_version,
            preemption={k: list(v) for k, v in DEFAULT_PREEMPTION.items()},
            ports=PortRanges(**event.ports) if event.ports else PortRanges(),
        )
    if view is None:
        msg = f"{type(event).__qualname__} arrived before the pool was created"
        raise ValueError(msg)
    view.updated_at = event.timestamp
    view.version = event.originator_version
    if isinstance(event, Pool.CapacityChanged):
        view.total = Resources.from_dict(event.capacity)
    elif isinstance(event, Pool.Reconfigured):
        view.worker_size = Resources.from_dict(event.worker_size)
        view.idle_timeout_seconds = event.idle_timeout_seconds
    elif isinstance(event, Pool.PortsChanged):
        view.ports = PortRanges(**event.ports)
    elif isinstance(event, Pool.ServerStarted):
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
    elif isinstance(event, Pool.ServerCharged):
        cost = Resources.from_dict(event.cost)
        view.servers[event.name] = replace(view.servers[event.name], cost=cost)
        view.reserved = view.reserved + cost
    elif isinstance(event, Pool.Reserved):
        view.reserved = view.reserved + Resources.from_dict(event.resources)
        if event.tenant is not None:
            held = view.held_by_tenant.get(event.tenant, Resources())
            view.held_by_tenant[event.tenant] = held + Resources.from_dict(
                event.resources
            )
        view.live_allocations += 1
        view.worker_ports_in_use += len(event.worker_ports)
        for name in event.servers:
            server = view.servers[name]
            view.servers[name] = replace(
                server, references=server.references + 1, idle_since=None
            )
    elif isinstance(event, Pool.Freed):
        view.reserved = view.reserved - Resources.from_dict(event.resources)
        if event.tenant is not None:
            left = view.held_by_tenant.get(
                event.tenant, Resources()
            ) - Resources.from_dict(event.resources)
            if left == Resources():
                view.held_by_tenant.pop(event.tenant, None)
            else:
                view.held_by_tenant[event.tenant] = left
        view.live_allocations -= 1
        view.worker_ports_in_use -= len(event.worker_ports)
        for name in event.servers:
            server = view.servers[name]
            references = server.references - 1
            view.servers[name] = replace(
                server,
                references=references,
                idle_since=event.timestamp if references == 0 else None,
            )
    elif isinstance(event, Pool.ServerStopped):
        view.servers.pop(event.name, None)
        if event.cost is not None:
            view.reserved = view.reserved - Resources.from_dict(event.cost)
    elif isinstance(event, Pool.Enqueued):
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
    elif isinstance(event, Pool.Dequeued):
        view.queue.pop(event.allocation_id, None)
    elif isinstance(event, Pool.QuotaSet):
        if event.limits is None:
            view.quotas.pop(event.tenant, None)
        else:
            view.quotas[event.tenant] = Resources.from_dict(event.limits)
    elif isinstance(event, Pool.SchedulingConfigured):
        view.queue_policy = event.queue_policy
        view.aging_seconds = event.aging_seconds
        view.preemption = {k: list(v) for k, v in event.preemption.items()}
    return view
