"""One allocation as get_allocation shows it, and allocations as
list_allocations lists them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.allocation_fields import (
    OmittedIfNone,
    PreemptedBy,
    QueueDeadline,
    ServerEndpoint,
    WorkerEndpoint,
    server_endpoint,
    worker_endpoint,
)
from allocation_ledger.adapters.mcp.schemas.refusals import (
    Reason,
    failure_reason,
    reason_of,
    refusal_message,
    shown_waiting_for,
)
from allocation_ledger.adapters.mcp.schemas.units import UtcTime, cores
from allocation_ledger.domain.values import AllocationState, Rejection, Resources
from allocation_ledger.projections.views import AllocationView


# get_allocation's `resources` and `timestamps` (no docstrings: a docstring
# would add a description to the tool's published output schema).
class HeldResources(BaseModel):
    cpu_allocated: float
    memory_allocated: int
    workers: int


class Timestamps(BaseModel):
    created_at: UtcTime
    activated_at: UtcTime | None
    expires_at: UtcTime | None
    released_at: UtcTime | None = Field(
        description=(
            "When it was released, expired or preempted (null while queued or "
            "live, or if failed)."
        )
    )
    ended_at: UtcTime | None = Field(description="When it reached a final state.")
    updated_at: UtcTime
    age_seconds: float


class AllocationHeadline(BaseModel):
    """What get_allocation and list_allocations show first of an allocation."""

    allocation_id: str
    job_id: str
    state: str
    priority: str


class AllocationDetail(AllocationHeadline):
    """One allocation, as get_allocation shows it."""

    pool: str
    request_id: str | None
    resources: HeldResources
    mcp_servers: list[ServerEndpoint]
    workers: list[WorkerEndpoint]
    timestamps: Timestamps
    ttl_seconds: int
    is_expired: bool = Field(
        description="True if expired, or live with its lease already run out."
    )
    metadata: dict[str, Any]
    renewals: int
    requested_by: str
    last_actor: str
    tenant: str | None = Field(description="Whose quota it counts in.")
    queue_deadline: QueueDeadline
    waiting_for: OmittedIfNone[Reason] = Field(
        None, description="Only while queued: what it waits for."
    )
    preempted_by: PreemptedBy = None
    error: OmittedIfNone[str] = None
    reason: OmittedIfNone[Reason] = None


class AllocationSummary(AllocationHeadline):
    """One allocation in a listing."""

    workers: int
    age_seconds: float
    is_expired: bool
    pool: str
    created_at: UtcTime
    expires_at: UtcTime | None
    sequence: int = Field(description="Listing order; use it as `after` for paging.")
    tenant: str | None
    queue_deadline: QueueDeadline
    preempted_by: PreemptedBy = None


class AllocationList(BaseModel):
    """list_allocations' structured result (its text is the plain JSON list)."""

    allocations: list[AllocationSummary]
    count: int


def _is_expired(view: AllocationView, now: datetime) -> bool:
    """Expired, or live past its lease; a pending one's lease has not begun
    (it counts from activation), as the ledger's `Allocation.is_due` says."""
    if view.state == AllocationState.EXPIRED.value:
        return True
    runs = AllocationState(view.state).lease_runs
    return runs and view.expires_at is not None and view.expires_at <= now


def _age(view: AllocationView, now: datetime) -> float:
    return max((now - view.created_at).total_seconds(), 0.0)


def allocation_detail(
    view: AllocationView, *, worker_size: Resources, now: datetime
) -> AllocationDetail:
    """get_allocation's answer, from the allocation's listing row."""
    state = AllocationState(view.state)
    queued = state is AllocationState.QUEUED
    held = Resources() if view.rejection is not None or queued else view.resources
    rejection = None if view.rejection is None else Rejection.from_dict(view.rejection)
    reason = failure_reason(
        rejection, failed=state is AllocationState.FAILED, error=view.error
    )
    ended = state in (
        AllocationState.RELEASED,
        AllocationState.EXPIRED,
        AllocationState.PREEMPTED,
    )
    return AllocationDetail(
        allocation_id=view.allocation_id,
        job_id=view.job_id,
        state=view.state,
        priority=view.priority,
        pool=view.pool,
        request_id=view.request_id,
        resources=HeldResources(
            cpu_allocated=cores(held.cpu_millicores),
            memory_allocated=held.memory_mib,
            workers=held.workers,
        ),
        mcp_servers=[server_endpoint(s, s.endpoint, state) for s in view.servers],
        workers=[
            worker_endpoint(w, w.endpoint, state, worker_size) for w in view.workers
        ],
        timestamps=Timestamps(
            created_at=view.created_at,
            activated_at=view.activated_at,
            expires_at=view.expires_at,
            released_at=view.ended_at if ended else None,
            ended_at=view.ended_at,
            updated_at=view.updated_at,
            age_seconds=_age(view, now),
        ),
        ttl_seconds=view.ttl_seconds,
        is_expired=_is_expired(view, now),
        metadata=view.metadata,
        renewals=view.renewals,
        requested_by=view.requested_by,
        last_actor=view.last_actor,
        tenant=view.tenant,
        queue_deadline=view.queue_deadline,
        waiting_for=shown_waiting_for(view.waiting_for, queued=queued),
        preempted_by=view.preempted_by,
        error=(
            refusal_message(reason_of(rejection))
            if rejection is not None
            else view.error
        ),
        reason=reason,
    )


def allocation_summary(view: AllocationView, *, now: datetime) -> AllocationSummary:
    """One item of list_allocations, from the allocation's listing row."""
    return AllocationSummary(
        allocation_id=view.allocation_id,
        job_id=view.job_id,
        state=view.state,
        priority=view.priority,
        workers=view.workers_requested,
        age_seconds=_age(view, now),
        is_expired=_is_expired(view, now),
        pool=view.pool,
        created_at=view.created_at,
        expires_at=view.expires_at,
        sequence=view.sequence,
        tenant=view.tenant,
        queue_deadline=view.queue_deadline,
        preempted_by=view.preempted_by,
    )
