"""What the MCP tools take and give: pydantic models in the original units.

The domain counts CPU in integer millicores and memory in integer MiB. The
MCP boundary speaks the original resource manager's units: `cpu` as float
cores and `memory` as MB (the same integers the domain holds as MiB). Every
conversion between the two lives here.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, PlainSerializer

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.pool_settings import (
    MAX_CPU_MILLICORES,
    MAX_MEMORY_MIB,
    MAX_WORKERS_CAPACITY,
)
from allocation_ledger.domain.ports import MCP_PORT_FIRST, MCP_PORT_LAST
from allocation_ledger.domain.provisioner import Endpoints
from allocation_ledger.domain.scheduling import MAX_WAIT_SECONDS, queue_rank
from allocation_ledger.domain.values import (
    JOB_ID_PATTERN,
    MAX_JOB_ID_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_SERVERS_PER_REQUEST,
    MAX_TTL_SECONDS,
    MAX_WORKERS_PER_REQUEST,
    MILLICORES_PER_CORE,
    MIN_TTL_SECONDS,
    POOL_NAME_PATTERN,
    QUEUE_TIMEOUT,
    QUEUED_AHEAD,
    QUOTA_EXCEEDED,
    SERVER_NAME_PATTERN,
    TENANT_PATTERN,
    AllocationState,
    Dimension,
    Priority,
    Rejection,
    Resources,
)
from allocation_ledger.projections.store import MAX_PAGE_SIZE
from allocation_ledger.projections.views import AllocationView, CapacityView, QueuedView

# -- units ---------------------------------------------------------------------

MAX_CPU_CORES = MAX_CPU_MILLICORES // MILLICORES_PER_CORE


def cores(millicores: int) -> float:
    """Millicores as float cores (exact to the nearest double)."""
    return millicores / MILLICORES_PER_CORE


def millicores(cpu: float) -> int:
    """Float cores as millicores; refuses values finer than a millicore."""
    try:
        exact = Decimal(repr(cpu)) * MILLICORES_PER_CORE
    except InvalidOperation:
        msg = f"cpu must be a finite number of cores, got {cpu!r}"
        raise ValueError(msg) from None
    if exact != exact.to_integral_value():
        msg = (
            f"cpu {cpu!r} is finer than a millicore; give cores with at most "
            "3 decimal places (e.g. 0.5 or 2.125)"
        )
        raise ValueError(msg)
    return int(exact)


def _whole_millicores(cpu: float) -> float:
    millicores(cpu)
    return cpu


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


UtcTime = Annotated[datetime, PlainSerializer(_iso, return_type=str)]
"""A time, written as ISO 8601 with an explicit +00:00 offset."""


def _omit_if_none(value: object) -> bool:
    return value is None


# -- tool arguments ------------------------------------------------------------

ALLOCATION_ID_PATTERN = r"^alloc-[0-9a-f]{12}$"

AllocationIdArg = Annotated[
    str,
    Field(
        strict=True,
        pattern=ALLOCATION_ID_PATTERN,
        description=(
            "The allocation's id as request_resources returned it: 'alloc-' "
            "followed by 12 lowercase hex characters, e.g. 'alloc-3f9c2a1b7d4e'."
        ),
    ),
]
JobIdArg = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=MAX_JOB_ID_LENGTH,
        pattern=JOB_ID_PATTERN.pattern,
        description=(
            "Your job's identifier, e.g. 'feature-dev-001': printable ASCII, "
            f"1-{MAX_JOB_ID_LENGTH} characters, no leading or trailing spaces. "
            "Several allocations may share a job id."
        ),
    ),
]
ServerNameArg = Annotated[
    str,
    Field(
        strict=True,
        max_length=63,
        pattern=SERVER_NAME_PATTERN.pattern,
        description="An MCP server name such as 'filesystem' or 'github'.",
    ),
]
McpServersArg = Annotated[
    list[ServerNameArg],
    Field(
        max_length=MAX_SERVERS_PER_REQUEST,
        description=(
            "Names of the MCP servers the job needs, e.g. ['filesystem', 'github'] "
            "(may be empty). A server already running is shared; otherwise it is "
            f"started on a free port in {MCP_PORT_FIRST}-{MCP_PORT_LAST}. Names: "
            "1-63 lowercase letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit; at most {MAX_SERVERS_PER_REQUEST}, no repeats."
        ),
    ),
]
WorkersArg = Annotated[
    int,
    Field(
        strict=True,
        ge=0,
        le=MAX_WORKERS_PER_REQUEST,
        description=(
            "How many workers to reserve (each 1 CPU core and 2048 MB by default). "
            "0 for MCP servers only."
        ),
    ),
]
PriorityArg = Annotated[
    Literal["low", "normal", "high", "critical"],
    Field(description="How much the job matters: low, normal, high or critical."),
]
TtlArg = Annotated[
    int,
    Field(
        strict=True,
        ge=MIN_TTL_SECONDS,
        le=MAX_TTL_SECONDS,
        description=(
            "Lease length in seconds, counted from activation "
            f"({MIN_TTL_SECONDS}-{MAX_TTL_SECONDS}). When it runs out the "
            "allocation expires and its capacity is taken back; renew_allocation "
            "extends it."
        ),
    ),
]
MetadataArg = Annotated[
    dict[str, Any] | None,
    Field(
        description=(
            "Free-form JSON object kept with the allocation, e.g. "
            '{"task_type": "feature"}; at most 16384 bytes as JSON. Omit for {}.'
        )
    ),
]
RequestIdArg = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_REQUEST_ID_LENGTH,
        description=(
            "Optional idempotency key (1-200 characters). Retrying with the same "
            "request_id and the same arguments returns the original allocation "
            "and changes nothing, so a retry after a timeout never reserves "
            "twice; the same request_id with different arguments is refused as "
            "an error. Omit it and every call makes a new allocation."
        ),
    ),
]
PoolArg = Annotated[
    str,
    Field(
        strict=True,
        max_length=63,
        pattern=POOL_NAME_PATTERN.pattern,
        description="Capacity pool to use; 'default' unless an operator made others.",
    ),
]
DryRunArg = Annotated[
    bool,
    Field(
        strict=True,
        description=(
            "If true, only check whether the request would fit now: nothing is "
            "reserved or recorded."
        ),
    ),
]
WaitArg = Annotated[
    bool,
    Field(
        strict=True,
        description=(
            "If true, a request that does not fit now waits in the pool's queue "
            "(status 'queued', holding nothing) and is granted when room frees, "
            "instead of being refused. If false, it is refused at once."
        ),
    ),
]
MaxWaitArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=1,
        le=MAX_WAIT_SECONDS,
        description=(
            "With wait: the longest to stay queued, in seconds "
            f"(1-{MAX_WAIT_SECONDS}); after that the request fails with reason "
            "code 'queue_timeout'. Omit to wait until granted or released "
            "(cancelled)."
        ),
    ),
]
PreemptArg = Annotated[
    bool,
    Field(
        strict=True,
        description=(
            "If true (the default) and the request does not fit, it may take the "
            "capacity of live allocations of strictly lower priority where the "
            "pool's preemption rules allow (by default critical preempts low and "
            "normal, high preempts low). False never preempts anyone."
        ),
    ),
]
TenantArg = Annotated[
    str | None,
    Field(
        max_length=128,
        pattern=TENANT_PATTERN.pattern,
        description=(
            "Whose quota the request counts against. Omit for your own identity "
            "(the token's subject over HTTP; no tenant over stdio). Naming "
            "another tenant needs the admin scope."
        ),
    ),
]
PriorityName = Literal["low", "normal", "high", "critical"]
StateArg = Annotated[
    Literal[
        "queued",
        "pending",
        "active",
        "releasing",
        "released",
        "expired",
        "failed",
        "preempted",
    ]
    | None,
    Field(description="Only allocations in this state (omit for all states)."),
]
JobIdFilterArg = Annotated[
    str | None,
    Field(
        max_length=MAX_JOB_ID_LENGTH,
        description="Only allocations of this job id (omit for all jobs).",
    ),
]
PriorityFilterArg = Annotated[
    Literal["low", "normal", "high", "critical"] | None,
    Field(description="Only allocations of this priority (omit for all)."),
]
PoolFilterArg = Annotated[
    str | None,
    Field(
        max_length=63,
        pattern=POOL_NAME_PATTERN.pattern,
        description="Only allocations in this pool (omit for all pools).",
    ),
]
AfterArg = Annotated[
    int,
    Field(
        strict=True,
        ge=0,
        description=(
            "Paging: only allocations whose `sequence` is greater than this; pass "
            "the last item's `sequence` to get the next page. 0 starts at the "
            "beginning."
        ),
    ),
]
LimitArg = Annotated[
    int,
    Field(
        strict=True,
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"At most this many allocations (1-{MAX_PAGE_SIZE}), oldest first.",
    ),
]
RenewTtlArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=MIN_TTL_SECONDS,
        le=MAX_TTL_SECONDS,
        description=(
            "New lease length in seconds from now "
            f"({MIN_TTL_SECONDS}-{MAX_TTL_SECONDS}); omit to reuse the "
            "allocation's own ttl_seconds."
        ),
    ),
]
CapacityCpuArg = Annotated[
    float | None,
    Field(
        strict=True,
        ge=0,
        le=MAX_CPU_CORES,
        allow_inf_nan=False,
        description=(
            "Total CPU of the pool in cores, at most 3 decimal places (a "
            "millicore), e.g. 16 or 12.5. Omit to keep the current total."
        ),
    ),
    AfterValidator(lambda v: None if v is None else _whole_millicores(v)),
]
CapacityMemoryArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=0,
        le=MAX_MEMORY_MIB,
        description="Total memory of the pool in MB. Omit to keep the current total.",
    ),
]
CapacityWorkersArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=0,
        le=MAX_WORKERS_CAPACITY,
        description=(
            f"Total worker slots of the pool (0-{MAX_WORKERS_CAPACITY}). Omit to "
            "keep the current total."
        ),
    ),
]
CapacityPoolArg = Annotated[
    str,
    Field(
        strict=True,
        max_length=63,
        pattern=POOL_NAME_PATTERN.pattern,
        description=(
            "Pool whose capacity to set or read; 'default' is created on first use."
        ),
    ),
]
QueuePoolArg = Annotated[
    str,
    Field(
        strict=True,
        max_length=63,
        pattern=POOL_NAME_PATTERN.pattern,
        description="Pool whose queue to show.",
    ),
]
SchedulingPoolArg = Annotated[
    str,
    Field(
        strict=True,
        max_length=63,
        pattern=POOL_NAME_PATTERN.pattern,
        description=(
            "Pool to configure; 'default' is created on first use, others must exist."
        ),
    ),
]
QuotaTenantArg = Annotated[
    str,
    Field(
        strict=True,
        max_length=128,
        pattern=TENANT_PATTERN.pattern,
        description=(
            "The tenant, e.g. 'team-a' or a token subject such as 'agent-7': 1-128 "
            "letters, digits, '.', '_', ':', '@' or '-', starting with a letter or "
            "digit."
        ),
    ),
]
QuotaCpuArg = Annotated[
    float | None,
    Field(
        strict=True,
        ge=0,
        le=MAX_CPU_CORES,
        allow_inf_nan=False,
        description=(
            "Most CPU, in cores (at most 3 decimal places), the tenant may hold at "
            "once in the pool. Omit to keep the current limit (none if it had no "
            "quota)."
        ),
    ),
    AfterValidator(lambda v: None if v is None else _whole_millicores(v)),
]
QuotaMemoryArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=0,
        le=MAX_MEMORY_MIB,
        description=(
            "Most memory, in MB, the tenant may hold at once in the pool. Omit to "
            "keep the current limit (none if it had no quota)."
        ),
    ),
]
QuotaWorkersArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=0,
        le=MAX_WORKERS_CAPACITY,
        description=(
            f"Most workers (0-{MAX_WORKERS_CAPACITY}) the tenant may hold at once in "
            "the pool. Omit to keep the current limit (none if it had no quota)."
        ),
    ),
]
ClearArg = Annotated[
    bool,
    Field(
        strict=True,
        description=(
            "If true, remove the tenant's quota in this pool (no limit); give no "
            "cpu, memory or workers with it."
        ),
    ),
]
QueuePolicyArg = Annotated[
    Literal["strict", "backfill"] | None,
    Field(
        description=(
            "What the queue does when its head does not fit: 'strict' (nobody "
            "passes the head, so no request starves) or 'backfill' (smaller "
            "requests behind it are granted if they fit). Omit to keep."
        ),
    ),
]
AgingSecondsArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=1,
        le=MAX_WAIT_SECONDS,
        description=(
            "A waiting request counts one priority higher per this many seconds "
            f"waited, up to critical (1-{MAX_WAIT_SECONDS}). Omit to keep."
        ),
    ),
]
PreemptionArg = Annotated[
    dict[PriorityName, list[PriorityName]] | None,
    Field(
        description=(
            "Which priorities each priority may preempt, always strictly lower "
            'ones, e.g. {"critical": ["low", "normal"], "high": ["low"]} (the '
            "default); {} turns preemption off. Replaces all the rules. Omit to "
            "keep."
        ),
    ),
]


# -- results -------------------------------------------------------------------


class Amounts(BaseModel):
    """Resources in client units."""

    cpu: float = Field(description="CPU in cores.")
    memory: int = Field(description="Memory in MB.")
    workers: int = Field(description="Worker slots.")


class QuotaLimits(BaseModel):
    """A tenant's limits in one pool; null means no limit in that dimension."""

    cpu: float | None = Field(description="Cores, or null for no limit.")
    memory: int | None = Field(description="MB, or null for no limit.")
    workers: int | None = Field(description="Worker slots, or null for no limit.")


class Reason(BaseModel):
    """Why a request was refused: the first dimension that did not fit."""

    code: str = Field(
        description=(
            "'insufficient_capacity' (the pool is short), 'quota_exceeded' (the "
            "tenant's quota would be passed), 'queued_ahead' (it would fit, but "
            "requests queued ahead of it come first) or 'queue_timeout' (its "
            "max_wait_seconds passed while queued)."
        )
    )
    dimension: Literal["workers", "cpu", "memory", "mcp_ports"]
    requested: int | float = Field(
        description="What the request needed (cpu in cores, memory in MB)."
    )
    available: int | float = Field(
        description=(
            "What the pool had left (cpu in cores, memory in MB); for "
            "quota_exceeded, what the tenant's quota had left."
        )
    )


class ServerEndpoint(BaseModel):
    """An MCP server as one allocation uses it."""

    name: str
    endpoint: str | None
    status: str = Field(
        description=(
            "running, pending, stopping, released, failed or planned (dry run)."
        )
    )
    port: int
    started: bool = Field(
        description="True if this allocation started the server, false if shared."
    )


class WorkerEndpoint(BaseModel):
    """A worker reserved for an allocation."""

    worker_id: str
    endpoint: str | None
    status: str = Field(
        description="active, pending, destroying, released, failed or planned."
    )
    cpu: float = Field(description="CPU cores of one worker.")
    memory: int = Field(description="MB of memory of one worker.")
    port: int


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
    queue_deadline: UtcTime | None = Field(
        description="While queued: when it fails with queue_timeout (null: never)."
    )
    waiting_for: Reason | None = Field(
        None,
        exclude_if=_omit_if_none,
        description="Only while queued: what it waits for (the dimension short).",
    )
    queue_position: int | None = Field(
        None,
        exclude_if=_omit_if_none,
        description="Only while queued: its place in the queue, 1 = served next.",
    )
    error: str | None = Field(
        None,
        exclude_if=_omit_if_none,
        description="Why it failed, e.g. 'Insufficient workers: requested 10, "
        "available 6'. Only present when status is 'failed'.",
    )
    reason: Reason | None = Field(
        None,
        exclude_if=_omit_if_none,
        description="The refusal, structured. Only present for refusals.",
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
    message: str | None = Field(None, exclude_if=_omit_if_none)


class McpServerStatus(BaseModel):
    """An MCP server running in a pool."""

    name: str
    port: int
    status: Literal["running", "idle"]
    references: int = Field(description="Live allocations using it.")
    started_at: UtcTime
    idle_since: UtcTime | None


class CapacityResult(BaseModel):
    """A pool's capacity, what is allocated, and what is left."""

    total_cpu: float
    total_memory: int
    total_workers: int
    allocated_cpu: float
    allocated_memory: int
    allocated_workers: int
    available_cpu: float = Field(
        description="total - allocated; negative after capacity was lowered below use."
    )
    available_memory: int
    available_workers: int
    running_mcp_servers: list[str] = Field(
        description="Names of the MCP servers up in this pool (running or idle)."
    )
    active_allocations: int = Field(
        description="Allocations holding capacity (pending, active or releasing)."
    )
    pool: str
    mcp_servers: list[McpServerStatus]
    free_mcp_ports: int
    worker_size: Amounts = Field(description="What one worker costs.")
    idle_timeout_seconds: int = Field(
        description="How long an unused MCP server keeps its port before it stops."
    )
    updated_at: UtcTime | None
    queue_length: int = Field(description="Requests waiting in the queue.")
    queue_policy: Literal["strict", "backfill"]
    aging_seconds: int = Field(
        description="A waiting request counts one priority higher per this period."
    )
    preemption: dict[str, list[str]] = Field(
        description="Which priorities each priority may preempt."
    )
    quotas: dict[str, QuotaLimits] = Field(
        description="Each tenant's limits in this pool (tenants without: no limit)."
    )
    held_by_tenant: dict[str, Amounts] = Field(
        description="What each tenant holds now (allocations without a tenant: not "
        "counted here)."
    )


class UsageRowResult(BaseModel):
    """What one job held in one pool over the period."""

    job_id: str
    pool: str
    cpu_core_seconds: float
    memory_mb_seconds: float
    worker_seconds: float
    mcp_server_seconds: float = Field(
        description="Seconds an allocation used an MCP server, summed over servers."
    )
    allocations: dict[str, int] = Field(
        description="Allocations requested in the period, by state now."
    )


class UsageResult(BaseModel):
    usage: list[UsageRowResult]
    count: int
    since: UtcTime | None
    until: UtcTime


class SetCapacityResult(CapacityResult):
    changed: bool = Field(description="False when the totals were already these.")


class QueuedRequest(BaseModel):
    """A request waiting in a pool's queue."""

    position: int = Field(description="1 = served next.")
    allocation_id: str
    job_id: str
    priority: str = Field(description="The priority it asked for.")
    effective_priority: str = Field(
        description="Its priority after aging: one higher per aging period waited."
    )
    effective_rank: int = Field(
        description="effective_priority as a number: low 0, normal 1, high 2, "
        "critical 3. The queue is served by rank, then arrival."
    )
    workers: int
    cpu: float = Field(description="Cores it needs.")
    memory: int = Field(description="MB it needs.")
    servers: list[str] = Field(description="MCP servers it needs.")
    tenant: str | None
    enqueued_at: UtcTime
    waited_seconds: float
    deadline: UtcTime | None = Field(
        description="When it fails with queue_timeout (null: it waits until granted)."
    )


class QueueResult(BaseModel):
    """get_queue's answer: who waits, in serving order, and the pool's rules."""

    pool: str
    queue: list[QueuedRequest]
    count: int
    queue_policy: Literal["strict", "backfill"]
    aging_seconds: int
    preemption: dict[str, list[str]]
    available: Amounts = Field(description="What the pool has free now.")


class QuotaResult(BaseModel):
    """set_quota's answer: the tenant's quota and every quota of the pool."""

    pool: str
    tenant: str
    quota: QuotaLimits | None = Field(description="The tenant's limits (null: none).")
    held: Amounts = Field(description="What the tenant holds in the pool now.")
    changed: bool = Field(description="False when the quota already was this.")
    quotas: dict[str, QuotaLimits]
    held_by_tenant: dict[str, Amounts]


class SchedulingResult(BaseModel):
    """set_scheduling's answer: the pool's scheduling rules afterwards."""

    pool: str
    queue_policy: Literal["strict", "backfill"]
    aging_seconds: int
    preemption: dict[str, list[str]]
    queue_length: int
    changed: bool = Field(description="False when the rules already were these.")


AtArg = Annotated[
    datetime | None,
    Field(
        description=(
            "A past moment (ISO 8601 with offset, e.g. 2026-11-26T09:00:00Z): the "
            "capacity as it was then, replayed from the event log. Omit for now."
        ),
    ),
]
SinceArg = Annotated[
    datetime | None,
    Field(description="Start of the period (ISO 8601); omit for the beginning."),
]
UntilArg = Annotated[
    datetime | None,
    Field(description="End of the period (ISO 8601, exclusive); omit for now."),
]


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


class AllocationDetail(BaseModel):
    """One allocation, as get_allocation shows it."""

    allocation_id: str
    job_id: str
    state: str
    priority: str
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
    queue_deadline: UtcTime | None = Field(
        description="While queued: when it fails with queue_timeout (null: never)."
    )
    waiting_for: Reason | None = Field(
        None,
        exclude_if=_omit_if_none,
        description="Only while queued: what it waits for.",
    )
    preempted_by: str | None = Field(
        None,
        exclude_if=_omit_if_none,
        description="Only when preempted: the allocation that took its capacity.",
    )
    error: str | None = Field(None, exclude_if=_omit_if_none)
    reason: Reason | None = Field(None, exclude_if=_omit_if_none)


class AllocationSummary(BaseModel):
    """One allocation in a listing."""

    allocation_id: str
    job_id: str
    state: str
    priority: str
    workers: int
    age_seconds: float
    is_expired: bool
    pool: str
    created_at: UtcTime
    expires_at: UtcTime | None
    sequence: int = Field(description="Listing order; use it as `after` for paging.")
    tenant: str | None
    queue_deadline: UtcTime | None = Field(
        description="While queued: when it fails with queue_timeout (null: never)."
    )
    preempted_by: str | None = Field(
        None,
        exclude_if=_omit_if_none,
        description="Only when preempted: the allocation that took its capacity.",
    )


class AllocationList(BaseModel):
    """list_allocations' structured result (its text is the plain JSON list)."""

    allocations: list[AllocationSummary]
    count: int


class CleanupResult(BaseModel):
    cleaned_up: list[str] = Field(description="Ids of the allocations expired now.")
    count: int
    deprovision_errors: list[str] = Field(
        description="Teardowns that failed (capacity was taken back regardless)."
    )


class RenewResult(BaseModel):
    allocation_id: str
    status: Literal["renewed"]
    job_id: str
    state: str
    ttl_seconds: int = Field(description="The lease length just applied.")
    expires_at: UtcTime
    renewed_at: UtcTime
    renewals: int


class HistoryEvent(BaseModel):
    version: int
    event: str = Field(
        description=(
            "requested, queued, granted, rejected, activated, renewed, "
            "release_requested, released, expired, preempted or failed."
        )
    )
    at: UtcTime
    actor: str = Field(
        description="Who caused it: a token subject, 'local', or 'system:sweeper'."
    )
    state: str = Field(description="The allocation's state after this event.")
    changes: dict[str, Any] = Field(
        description="What the event recorded (cpu in cores, memory in MB)."
    )


class HistoryResult(BaseModel):
    allocation_id: str
    job_id: str
    pool: str
    state: str
    events: list[HistoryEvent]
    count: int


# -- building results ----------------------------------------------------------


def amounts(resources: Resources) -> Amounts:
    return Amounts(
        cpu=cores(resources.cpu_millicores),
        memory=resources.memory_mib,
        workers=resources.workers,
    )


def _client_amount(dimension: Dimension, amount: int) -> int | float:
    return cores(amount) if dimension is Dimension.CPU else amount


def reason_of(rejection: Rejection) -> Reason:
    return Reason(
        code=rejection.code,
        dimension=rejection.dimension.value,
        requested=_client_amount(rejection.dimension, rejection.requested),
        available=_client_amount(rejection.dimension, rejection.available),
    )


def refusal_message(reason: Reason) -> str:
    """The original wording: 'Insufficient workers: requested 10, available 6'.

    The scheduling refusals say what stopped them in the same form.
    """
    amounts = f"requested {reason.requested}, available {reason.available}"
    if reason.code == QUOTA_EXCEEDED:
        return f"Quota exceeded for {reason.dimension}: {amounts} within the quota"
    if reason.code == QUEUED_AHEAD:
        return (
            f"Requests queued ahead come first ({reason.dimension}: {amounts} "
            "after them)"
        )
    if reason.code == QUEUE_TIMEOUT:
        return f"Queue wait ran out: insufficient {reason.dimension}: {amounts}"
    return f"Insufficient {reason.dimension}: {amounts}"


UNLIMITED = Resources(MAX_CPU_MILLICORES, MAX_MEMORY_MIB, MAX_WORKERS_CAPACITY)
"""A quota dimension set to its maximum is no limit."""


def quota_limits(limits: Resources) -> QuotaLimits:
    return QuotaLimits(
        cpu=(
            None
            if limits.cpu_millicores >= UNLIMITED.cpu_millicores
            else cores(limits.cpu_millicores)
        ),
        memory=None if limits.memory_mib >= UNLIMITED.memory_mib else limits.memory_mib,
        workers=None if limits.workers >= UNLIMITED.workers else limits.workers,
    )


_BY_RANK = {p.rank: p for p in Priority}


def queued_requests(view: CapacityView, now: datetime) -> list[QueuedRequest]:
    """A pool's queue in serving order: effective rank (aged), then arrival."""

    def rank(entry: QueuedView) -> int:
        return queue_rank(
            Priority(entry.priority), entry.enqueued_at, now, view.aging_seconds
        )

    ordered = sorted(view.queue.values(), key=lambda e: (-rank(e), e.arrival))
    return [
        QueuedRequest(
            position=position,
            allocation_id=entry.allocation_id,
            job_id=entry.job_id,
            priority=entry.priority,
            effective_priority=_BY_RANK[rank(entry)].value,
            effective_rank=rank(entry),
            workers=entry.workers,
            cpu=cores(entry.resources.cpu_millicores),
            memory=entry.resources.memory_mib,
            servers=list(entry.servers),
            tenant=entry.tenant,
            enqueued_at=entry.enqueued_at,
            waited_seconds=max((now - entry.enqueued_at).total_seconds(), 0.0),
            deadline=entry.deadline,
        )
        for position, entry in enumerate(ordered, start=1)
    ]


_SERVER_STATUS = {
    AllocationState.QUEUED: "queued",
    AllocationState.PREEMPTED: "released",
    AllocationState.PENDING: "pending",
    AllocationState.ACTIVE: "running",
    AllocationState.RELEASING: "stopping",
    AllocationState.RELEASED: "released",
    AllocationState.EXPIRED: "released",
    AllocationState.FAILED: "failed",
}
_WORKER_STATUS = {
    AllocationState.QUEUED: "queued",
    AllocationState.PREEMPTED: "released",
    AllocationState.PENDING: "pending",
    AllocationState.ACTIVE: "active",
    AllocationState.RELEASING: "destroying",
    AllocationState.RELEASED: "released",
    AllocationState.EXPIRED: "released",
    AllocationState.FAILED: "failed",
}


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
    reason = None if allocation.rejection is None else reason_of(allocation.rejection)
    error = refusal_message(reason) if reason is not None else allocation.error
    request = allocation.request
    return RequestResourcesResult(
        allocation_id=allocation.allocation_id,
        status="dry_run" if planned else state.value,
        job_id=request.job_id,
        mcp_servers=[
            ServerEndpoint(
                name=slot.name,
                endpoint=endpoints.servers.get(slot.name),
                status="planned" if planned else _SERVER_STATUS[state],
                port=slot.port,
                started=slot.started,
            )
            for slot in allocation.servers
        ],
        workers_allocated=[
            WorkerEndpoint(
                worker_id=slot.worker_id,
                endpoint=endpoints.workers.get(slot.worker_id),
                status="planned" if planned else _WORKER_STATUS[state],
                cpu=cores(worker_size.cpu_millicores),
                memory=worker_size.memory_mib,
                port=slot.port,
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


def _is_expired(view: AllocationView, now: datetime) -> bool:
    if view.state == AllocationState.EXPIRED.value:
        return True
    live = AllocationState(view.state).is_live
    return live and view.expires_at is not None and view.expires_at <= now


def _age(view: AllocationView, now: datetime) -> float:
    return max((now - view.created_at).total_seconds(), 0.0)


def allocation_detail(
    view: AllocationView, *, worker_size: Resources, now: datetime
) -> AllocationDetail:
    """get_allocation's answer, from the allocation's listing row."""
    state = AllocationState(view.state)
    queued = state is AllocationState.QUEUED
    held = Resources() if view.rejection is not None or queued else view.resources
    reason = (
        None
        if view.rejection is None
        else reason_of(Rejection.from_dict(view.rejection))
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
        mcp_servers=[
            ServerEndpoint(
                name=s.name,
                endpoint=s.endpoint,
                status=_SERVER_STATUS[state],
                port=s.port,
                started=s.started,
            )
            for s in view.servers
        ],
        workers=[
            WorkerEndpoint(
                worker_id=w.worker_id,
                endpoint=w.endpoint,
                status=_WORKER_STATUS[state],
                cpu=cores(worker_size.cpu_millicores),
                memory=worker_size.memory_mib,
                port=w.port,
            )
            for w in view.workers
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
        waiting_for=(
            reason_of(Rejection.from_dict(view.waiting_for))
            if queued and view.waiting_for is not None
            else None
        ),
        preempted_by=view.preempted_by,
        error=refusal_message(reason) if reason is not None else view.error,
        reason=reason,
    )


def allocation_summary(view: AllocationView, *, now: datetime) -> AllocationSummary:
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


def capacity_result(view: CapacityView) -> CapacityResult:
    servers = sorted(view.servers.values(), key=lambda s: (s.port, s.name))
    available = view.available
    return CapacityResult(
        total_cpu=cores(view.total.cpu_millicores),
        total_memory=view.total.memory_mib,
        total_workers=view.total.workers,
        allocated_cpu=cores(view.reserved.cpu_millicores),
        allocated_memory=view.reserved.memory_mib,
        allocated_workers=view.reserved.workers,
        available_cpu=cores(available.cpu_millicores),
        available_memory=available.memory_mib,
        available_workers=available.workers,
        running_mcp_servers=[s.name for s in servers],
        active_allocations=view.live_allocations,
        pool=view.pool,
        mcp_servers=[
            McpServerStatus(
                name=s.name,
                port=s.port,
                status="running" if s.references > 0 else "idle",
                references=s.references,
                started_at=s.started_at,
                idle_since=s.idle_since,
            )
            for s in servers
        ],
        free_mcp_ports=MCP_PORT_LAST - MCP_PORT_FIRST + 1 - len(servers),
        worker_size=amounts(view.worker_size),
        idle_timeout_seconds=view.idle_timeout_seconds,
        updated_at=view.updated_at,
        queue_length=len(view.queue),
        queue_policy=view.queue_policy,
        aging_seconds=view.aging_seconds,
        preemption={k: list(v) for k, v in sorted(view.preemption.items())},
        quotas={t: quota_limits(q) for t, q in sorted(view.quotas.items())},
        held_by_tenant={t: amounts(h) for t, h in sorted(view.held_by_tenant.items())},
    )


# -- history -------------------------------------------------------------------

_STATE_AFTER: dict[type[Allocation.Event], AllocationState] = {
    Allocation.Requested: AllocationState.PENDING,
    Allocation.Queued: AllocationState.QUEUED,
    Allocation.Granted: AllocationState.PENDING,
    Allocation.Preempted: AllocationState.PREEMPTED,
    Allocation.Rejected: AllocationState.FAILED,
    Allocation.Activated: AllocationState.ACTIVE,
    Allocation.ReleaseRequested: AllocationState.RELEASING,
    Allocation.Released: AllocationState.RELEASED,
    Allocation.Expired: AllocationState.EXPIRED,
    Allocation.Failed: AllocationState.FAILED,
}
_BASE_FIELDS = frozenset(
    {"originator_id", "originator_version", "timestamp", "actor", "originator_topic"}
)


def _event_name(event: object) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _changes(event: Allocation.Event) -> dict[str, Any]:
    """What one event recorded, in client units."""
    if isinstance(event, Allocation.Requested):
        request = event.request
        return {
            "job_id": request["job_id"],
            "pool": event.pool,
            "mcp_servers": list(request["servers"]),
            "workers": request["workers"],
            "priority": request["priority"],
            "ttl_seconds": request["ttl_seconds"],
            "metadata": request["metadata"],
            "request_id": event.request_id,
            "resources": amounts(Resources.from_dict(event.resources)).model_dump(),
            "worker_ports": list(event.worker_ports),
            "server_ports": {str(name): int(port) for name, port, _ in event.servers},
            "servers_started": [
                str(name) for name, _, started in event.servers if started
            ],
            "expires_at": _json_safe(event.expires_at),
            "tenant": event.tenant,
        }
    if isinstance(event, Allocation.Rejected):
        reason = reason_of(Rejection.from_dict(event.reason))
        return {"error": refusal_message(reason), "reason": reason.model_dump()}
    if isinstance(event, Allocation.Queued):
        waiting = reason_of(Rejection.from_dict(event.reason))
        return {
            "waiting_for": waiting.model_dump(),
            "queue_deadline": _json_safe(event.deadline),
        }
    if isinstance(event, Allocation.Granted):
        return {
            "worker_ports": list(event.worker_ports),
            "server_ports": {str(name): int(port) for name, port, _ in event.servers},
            "servers_started": [
                str(name) for name, _, started in event.servers if started
            ],
            "expires_at": _iso(event.expires_at),
        }
    if isinstance(event, Allocation.Preempted):
        return {"preempted_by": event.by}
    if isinstance(event, Allocation.Activated):
        return {
            "worker_endpoints": dict(event.worker_endpoints),
            "server_endpoints": dict(event.server_endpoints),
            "expires_at": _iso(event.expires_at),
        }
    return {
        field.name: _json_safe(getattr(event, field.name))
        for field in dataclasses.fields(event)
        if field.name not in _BASE_FIELDS
    }


def history_result(allocation_id: str, events: list[Allocation.Event]) -> HistoryResult:
    """Every event of one allocation, in order, with time, actor and changes."""
    entries: list[HistoryEvent] = []
    state = AllocationState.PENDING
    job_id = pool = ""
    for event in events:
        if isinstance(event, Allocation.Requested):
            job_id, pool = event.request["job_id"], event.pool
        state = _STATE_AFTER.get(type(event), state)
        entries.append(
            HistoryEvent(
                version=event.originator_version,
                event=_event_name(event),
                at=event.timestamp,
                actor=event.actor,
                state=state.value,
                changes=_changes(event),
            )
        )
    return HistoryResult(
        allocation_id=allocation_id,
        job_id=job_id,
        pool=pool,
        state=state.value,
        events=entries,
        count=len(entries),
    )
