"""What the scheduling tools take and answer: get_queue, set_quota, set_scheduling."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.allocation_arguments import (
    PoolName,
    PriorityName,
)
from allocation_ledger.adapters.mcp.schemas.units import (
    Amounts,
    CoresSetting,
    MemorySetting,
    UtcTime,
    WorkersSetting,
    amounts,
    cores,
)
from allocation_ledger.domain.pool_settings import (
    MAX_CPU_MILLICORES,
    MAX_MEMORY_MIB,
    MAX_WORKERS_CAPACITY,
)
from allocation_ledger.domain.scheduling import MAX_WAIT_SECONDS, queue_rank
from allocation_ledger.domain.values import (
    TENANT_PATTERN,
    Priority,
    Resources,
)
from allocation_ledger.projections.views import CapacityView, QueuedView

QueuePoolArg = Annotated[PoolName, Field(description="Pool whose queue to show.")]
SchedulingPoolArg = Annotated[
    PoolName,
    Field(
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
            "letters, digits, '.', '_', ':', '@', '/' or '-', starting with a letter "
            "or digit."
        ),
    ),
]
QuotaCpuArg = Annotated[
    CoresSetting,
    Field(
        description=(
            "Most CPU, in cores (at most 3 decimal places), the tenant may hold at "
            "once in the pool. Omit to keep the current limit (none if it had no "
            "quota)."
        ),
    ),
]
QuotaMemoryArg = Annotated[
    MemorySetting,
    Field(
        description=(
            "Most memory, in MB, the tenant may hold at once in the pool. Omit to "
            "keep the current limit (none if it had no quota)."
        ),
    ),
]
QuotaWorkersArg = Annotated[
    WorkersSetting,
    Field(
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
QueuePolicyName = Literal["strict", "backfill"]
"""What a pool's queue does when its head does not fit."""
CrossTenantName = Literal["over_quota", "any", "never"]
"""Whether preemption reaches other tenants' allocations
(domain/scheduling.py, CrossTenantPreemption)."""
CROSS_TENANT_DESCRIPTION = (
    "Whether a request may preempt other tenants' allocations (priorities are "
    "self-declared, so across tenants they prove nothing): 'over_quota' (the "
    "default) only allocations of a tenant holding more than its quota in the "
    "pool, in a dimension they hold some of; a tenant without a quota here is "
    "never preempted by another; 'any' priorities compare across tenants as "
    "within one (pools from before this setting); 'never' only the request's "
    "own tenant's. Within a tenant the preemption rules apply as they are."
)
PreemptionRules = dict[str, list[str]]
"""Which priorities each priority may preempt, by name."""
QueuePolicyArg = Annotated[
    QueuePolicyName | None,
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
CrossTenantArg = Annotated[
    CrossTenantName | None,
    Field(description=CROSS_TENANT_DESCRIPTION + " Omit to keep."),
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


class QuotaLimits(BaseModel):
    """A tenant's limits in one pool; null means no limit in that dimension."""

    cpu: float | None = Field(description="Cores, or null for no limit.")
    memory: int | None = Field(description="MB, or null for no limit.")
    workers: int | None = Field(description="Worker slots, or null for no limit.")


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
    queue_policy: QueuePolicyName
    aging_seconds: int
    preemption: PreemptionRules
    cross_tenant_preemption: CrossTenantName = Field(
        description=CROSS_TENANT_DESCRIPTION
    )
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
    queue_policy: QueuePolicyName
    aging_seconds: int
    preemption: PreemptionRules
    cross_tenant_preemption: CrossTenantName = Field(
        description=CROSS_TENANT_DESCRIPTION
    )
    queue_length: int
    changed: bool = Field(description="False when the rules already were these.")


UNLIMITED = Resources(MAX_CPU_MILLICORES, MAX_MEMORY_MIB, MAX_WORKERS_CAPACITY)
"""A quota dimension set to its maximum is no limit."""


def quota_limits(limits: Resources) -> QuotaLimits:
    """A tenant's limits in client units; a dimension at UNLIMITED is null."""
    return QuotaLimits(
        cpu=(
            None
            if limits.cpu_millicores >= UNLIMITED.cpu_millicores
            else cores(limits.cpu_millicores)
        ),
        memory=None if limits.memory_mib >= UNLIMITED.memory_mib else limits.memory_mib,
        workers=None if limits.workers >= UNLIMITED.workers else limits.workers,
    )


def tenant_quotas(view: CapacityView) -> dict[str, QuotaLimits]:
    """Every tenant's quota in a pool, by tenant."""
    return {t: quota_limits(q) for t, q in sorted(view.quotas.items())}


def tenant_holdings(view: CapacityView) -> dict[str, Amounts]:
    """What each tenant holds in a pool now, by tenant."""
    return {t: amounts(h) for t, h in sorted(view.held_by_tenant.items())}


def cross_tenant_name(view: CapacityView) -> CrossTenantName:
    """A pool's cross-tenant preemption setting, by name."""
    return CROSS_TENANT_NAMES[view.cross_tenant_preemption]


CROSS_TENANT_NAMES: dict[str, CrossTenantName] = {
    "over_quota": "over_quota",
    "any": "any",
    "never": "never",
}


def preemption_rules(view: CapacityView) -> PreemptionRules:
    """A pool's preemption rules, by preempting priority."""
    return {k: list(v) for k, v in sorted(view.preemption.items())}


_BY_RANK = {p.rank: p for p in Priority}


def _rank(view: CapacityView, entry: QueuedView, now: datetime) -> int:
    return queue_rank(
        Priority(entry.priority), entry.enqueued_at, now, view.aging_seconds
    )


def queue_order(view: CapacityView, now: datetime) -> list[QueuedView]:
    """A pool's queue in serving order: effective rank (aged), then arrival."""
    return sorted(view.queue.values(), key=lambda e: (-_rank(view, e, now), e.arrival))


def queued_requests(view: CapacityView, now: datetime) -> list[QueuedRequest]:
    """A pool's queue in serving order (`queue_order`), as get_queue shows it."""

    def rank(entry: QueuedView) -> int:
        return _rank(view, entry, now)

    ordered = queue_order(view, now)
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
