"""Read-model views straight from an aggregate, as a command saved it.

A command's reply is built from what the command committed, never from a
read that could fail after the commit. A pool command returns the Pool it
saved; `capacity_view_of` shows it as the capacity read model would, once
caught up with the same events (tests/test_aggregate_views.py checks both
agree).
"""

from __future__ import annotations

from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.values import Resources
from allocation_ledger.projections.views import CapacityView, QueuedView, ServerView


def capacity_view_of(pool: Pool) -> CapacityView:
    """The capacity view of `pool`, from the aggregate alone.

    One difference from the read model: a queued request's `resources` are
    what it needs at the pool's sizes now (the read model keeps those of
    when it was queued, which differ only if the sizes changed since).
    """
    settings = pool.settings
    held_by_tenant: dict[str, Resources] = {}
    for reservation in pool.reservations.values():
        if reservation.tenant is not None:
            held = held_by_tenant.get(reservation.tenant, Resources())
            held_by_tenant[reservation.tenant] = held + reservation.resources
    return CapacityView(
        pool=pool.name,
        total=settings.capacity,
        reserved=pool.reserved,
        worker_size=settings.worker_size,
        idle_timeout_seconds=settings.idle_timeout_seconds,
        live_allocations=len(pool.reservations),
        servers={
            name: ServerView(
                name=server.name,
                port=server.port,
                references=server.references,
                started_at=server.started_at,
                idle_since=server.idle_since,
                cost=server.cost,
            )
            for name, server in pool.servers.items()
        },
        worker_ports_in_use=len(pool.worker_ports),
        updated_at=pool.modified_on,
        version=pool.version,
        queue={
            entry.allocation_id: QueuedView(
                allocation_id=entry.allocation_id,
                job_id=entry.request.job_id,
                priority=entry.request.priority.value,
                workers=entry.request.workers,
                servers=list(entry.request.servers),
                resources=settings.workers_for(entry.request),
                arrival=entry.arrival,
                enqueued_at=entry.enqueued_at,
                deadline=entry.deadline,
                tenant=entry.tenant,
            )
            for entry in pool.queue.values()
        },
        arrivals=pool.arrivals,
        queue_policy=pool.scheduling.queue_policy.value,
        aging_seconds=pool.scheduling.aging_seconds,
        preemption={by: list(v) for by, v in pool.scheduling.preemption.items()},
        cross_tenant_preemption=pool.scheduling.cross_tenant_preemption.value,
        quotas=dict(pool.quotas),
        held_by_tenant=held_by_tenant,
    )
