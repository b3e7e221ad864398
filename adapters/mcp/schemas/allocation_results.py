"""What the allocation commands answer: request, release, renew, clean up."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.allocation_fields import (
    OmittedIfNone,
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
from allocation_ledger.adapters.mcp.schemas.units import (
    Amounts,
    UtcTime,
    amounts,
)
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.provisioner import Endpoints
from allocation_ledger.domain.values import AllocationState, Rejection, Resources
from allocation_ledger.projections.views import AllocationView


class RequestResourcesResult(BaseModel):
    """What request_resources did. A refusal has status 'failed' and `error`."""

    allocation_id: str
    status: str = Field(
        description=(
            "'active' when granted, 'queued' when waiting for room (wait=true), "
            "'failed' when refused or provisioning failed, 'dry_run' when a dry "
            "run would be granted; on a request_id retry, the allocation's "
            "current state."
        )
    )
    job_id: str
    mcp_servers: list[ServerEndpoint]
    workers_allocated: list[WorkerEndpoint]
    resources: Amounts = Field(
        description="What the allocation holds (for a refusal: what it asked for)."
    )
    ttl_seconds: int
    created_at: UtcTime | None
    state: str
    priority: str
    expires_at: UtcTime | None
    pool: str
    request_id: str | None
    replayed: bool = Field(
        description="True when this is an earlier allocation returned for a retry."
    )
    dry_run: bool
    expired_first: list[str] = Field(
        description="Allocations whose lease had run out, expired to make room."
    )
    preempted: list[str] = Field(
        description=(
            "Allocations of lower priority preempted to make room for this one "
            "(on a dry run: that would be)."
        )
    )
    tenant: str | None = Field(description="Whose quota the allocation counts in.")
    queue_deadline: QueueDeadline
    waiting_for: OmittedIfNone[Reason] = Field(
        None, description="Only while queued: what it waits for (the dimension short)."
    )
    queue_position: OmittedIfNone[int] = Field(
        None,
        description=(
            "Only while queued: its place in the queue, 1 = served next (left "
            "out if the queue could not be read just after the request was saved)."
        ),
    )
    error: OmittedIfNone[str] = Field(
        None,
        description="Why it failed, e.g. 'Insufficient workers: requested 10, "
        "available 6'. Only present when status is 'failed'.",
    )
    reason: OmittedIfNone[Reason] = Field(
        None,
        description=(
            "The refusal, structured (only for refusals), or code "
            "'provisioning_failed' when an MCP server did not start."
        ),
    )


class ReleaseResourcesResult(BaseModel):
    """What release_resources did."""

    status: Literal["released", "already_released", "failed"] = Field(
        description=(
            "'released' now; 'already_released' if it had been released or had "
            "expired (nothing changed); 'failed' if it had failed and held "
            "nothing (nothing changed)."
        )
    )
    allocation_id: str
    job_id: str
    state: str
    workers_released: int
    cpu_freed: float = Field(description="Cores given back by this call.")
    memory_freed: int = Field(description="MB given back by this call.")
    released_at: UtcTime | None
    duration_seconds: float | None = Field(
        description="How long the allocation was held (null unless released now)."
    )
    message: OmittedIfNone[str] = None


# cleanup_expired's answer. (A docstring would add a description to the tool's
# published output schema, which clients see.)
class CleanupResult(BaseModel):
    cleaned_up: list[str] = Field(description="Ids of the allocations expired now.")
    count: int
    deprovision_errors: list[str] = Field(
        description="Teardowns that failed (capacity was taken back regardless)."
    )


# renew_allocation's answer (no docstring, as for CleanupResult).
class RenewResult(BaseModel):
    allocation_id: str
    status: Literal["renewed"]
    job_id: str
    state: str
    ttl_seconds: int = Field(description="The lease length just applied.")
    expires_at: UtcTime
    renewed_at: UtcTime
    renewals: int


def request_result(
    allocation: Allocation,
    *,
    worker_size: Resources,
    replayed: bool,
    dry_run: bool,
    expired_first: tuple[str, ...],
    preempted: tuple[str, ...] = (),
    waiting_for: Rejection | None = None,
    queue_position: int | None = None,
) -> RequestResourcesResult:
    """request_resources' answer, from the allocation the ledger returned."""
    state = allocation.state
    planned = dry_run and state is AllocationState.PENDING
    endpoints: Endpoints = allocation.endpoints
    rejection = allocation.rejection
    reason = failure_reason(
        rejection, failed=state is AllocationState.FAILED, error=allocation.error
    )
    error = (
        refusal_message(reason_of(rejection))
        if rejection is not None
        else allocation.error
    )
    request = allocation.request
    return RequestResourcesResult(
        allocation_id=allocation.allocation_id,
        status="dry_run" if planned else state.value,
        job_id=request.job_id,
        mcp_servers=[
            server_endpoint(
                slot, endpoints.servers.get(slot.name), state, planned=planned
            )
            for slot in allocation.servers
        ],
        workers_allocated=[
            worker_endpoint(
                slot,
                endpoints.workers.get(slot.worker_id),
                state,
                worker_size,
                planned=planned,
            )
            for slot in allocation.workers
        ],
        resources=amounts(allocation.resources),
        ttl_seconds=request.ttl_seconds,
        created_at=allocation.requested_at,
        state=state.value,
        priority=request.priority.value,
        expires_at=allocation.expires_at,
        pool=allocation.pool,
        request_id=allocation.request_id,
        replayed=replayed,
        dry_run=dry_run,
        expired_first=list(expired_first),
        preempted=list(preempted),
        tenant=allocation.tenant,
        queue_deadline=allocation.queue_deadline,
        waiting_for=(
            reason_of(waiting_for)
            if waiting_for is not None and state is AllocationState.QUEUED
            else None
        ),
        queue_position=queue_position if state is AllocationState.QUEUED else None,
        error=error if state is AllocationState.FAILED else None,
        reason=reason,
    )


def request_result_of_view(
    view: AllocationView,
    *,
    worker_size: Resources,
    replayed: bool,
    expired_first: list[str],
    preempted: list[str],
    queue_position: int | None,
) -> RequestResourcesResult:
    """request_resources' answer after its call waited (block_seconds), from
    the allocation's listing row as it is now: the same keys and values as
    `request_result` gives for an allocation in that state. `replayed`,
    `expired_first` and `preempted` are those of the request itself."""
    state = AllocationState(view.state)
    rejection = None if view.rejection is None else Rejection.from_dict(view.rejection)
    queued = state is AllocationState.QUEUED
    return RequestResourcesResult(
        allocation_id=view.allocation_id,
        status=state.value,
        job_id=view.job_id,
        mcp_servers=[server_endpoint(s, s.endpoint, state) for s in view.servers],
        workers_allocated=[
            worker_endpoint(w, w.endpoint, state, worker_size) for w in view.workers
        ],
        resources=amounts(view.resources),
        ttl_seconds=view.ttl_seconds,
        created_at=view.created_at,
        state=state.value,
        priority=view.priority,
        expires_at=view.expires_at,
        pool=view.pool,
        request_id=view.request_id,
        replayed=replayed,
        dry_run=False,
        expired_first=expired_first,
        preempted=preempted,
        tenant=view.tenant,
        queue_deadline=view.queue_deadline,
        waiting_for=shown_waiting_for(view.waiting_for, queued=queued),
        queue_position=queue_position if queued else None,
        error=(
            (refusal_message(reason_of(rejection)) if rejection else view.error)
            if state is AllocationState.FAILED
            else None
        ),
        reason=failure_reason(
            rejection, failed=state is AllocationState.FAILED, error=view.error
        ),
    )
