"""What the capacity tools take and answer: get_capacity and set_capacity."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
)

from allocation_ledger.adapters.mcp.schemas.allocation_arguments import PoolName
from allocation_ledger.adapters.mcp.schemas.scheduling import (
    CROSS_TENANT_DESCRIPTION,
    CrossTenantName,
    PreemptionRules,
    QueuePolicyName,
    QuotaLimits,
    cross_tenant_name,
    preemption_rules,
    tenant_holdings,
    tenant_quotas,
)
from allocation_ledger.adapters.mcp.schemas.units import (
    Amounts,
    CoresSetting,
    MemorySetting,
    Moment,
    UtcTime,
    WorkersSetting,
    amounts,
    cores,
)
from allocation_ledger.domain.pool_settings import MAX_WORKERS_CAPACITY
from allocation_ledger.domain.ports import free_mcp_ports
from allocation_ledger.projections.views import CapacityView

CapacityCpuArg = Annotated[
    CoresSetting,
    Field(
        description=(
            "Total CPU of the pool in cores, at most 3 decimal places (a "
            "millicore), e.g. 16 or 12.5. Omit to keep the current total."
        ),
    ),
]
CapacityMemoryArg = Annotated[
    MemorySetting,
    Field(
        description="Total memory of the pool in MB. Omit to keep the current total.",
    ),
]
CapacityWorkersArg = Annotated[
    WorkersSetting,
    Field(
        description=(
            f"Total worker slots of the pool (0-{MAX_WORKERS_CAPACITY}). Omit to "
            "keep the current total."
        ),
    ),
]
CapacityPoolArg = Annotated[
    PoolName,
    Field(
        description=(
            "Pool whose capacity to set or read; 'default' is created on first use."
        ),
    ),
]
AtArg = Annotated[
    Moment | None,
    Field(
        description=(
            "A past moment (ISO 8601 with offset, e.g. 2026-11-26T09:00:00Z): the "
            "capacity as it was then, replayed from the event log. Omit for now."
        ),
    ),
]


class McpServerStatus(BaseModel):
    """An MCP server running in a pool."""

    name: str
    port: int
    status: Literal["running", "idle"]
    references: int = Field(description="Live allocations using it.")
    started_at: UtcTime
    idle_since: UtcTime | None
    cost: Amounts | None = Field(
        None,
        description=(
            "What this instance reserves in the pool while it runs, idle or not, "
            "once however many allocations share it (absent: started before "
            "instances held their cost; its allocations were charged it)."
        ),
    )

    @model_serializer(mode="wrap")
    def _without_absent_cost(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        """An instance of the old rule shows as it did then: no `cost` key."""
        shown: dict[str, Any] = handler(self)
        if self.cost is None:
            shown.pop("cost", None)
        return shown


RESERVED_SLOTS_ONLY = "reserved slots only"
"""get_capacity's worker_enforcement for a pool whose workers are addresses."""


class CapacityResult(BaseModel):
    """A pool's capacity, what is allocated, and what is left."""

    total_cpu: float
    total_memory: int
    total_workers: int
    allocated_cpu: float = Field(
        description=(
            "Reserved: the workers of live allocations plus the cost of each "
            "running or idle MCP server instance (once per instance)."
        )
    )
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
    free_mcp_ports: int = Field(
        description="Ports of the pool's MCP range no running or idle server holds."
    )
    mcp_ports: tuple[int, int] = Field(
        description=(
            "[first, last] (both included): the ports this pool's MCP servers "
            "are started on, the lowest free first."
        )
    )
    worker_ports: tuple[int, int] = Field(
        description=(
            "[first, last] (both included): the ports this pool's workers get, "
            "the lowest free first."
        )
    )
    worker_size: Amounts = Field(description="What one worker costs.")
    idle_timeout_seconds: int = Field(
        description="How long an unused MCP server keeps its port before it stops."
    )
    updated_at: UtcTime | None
    queue_length: int = Field(description="Requests waiting in the queue.")
    queue_policy: QueuePolicyName
    aging_seconds: int = Field(
        description="A waiting request counts one priority higher per this period."
    )
    preemption: PreemptionRules = Field(
        description="Which priorities each priority may preempt."
    )
    cross_tenant_preemption: CrossTenantName = Field(
        description=CROSS_TENANT_DESCRIPTION
    )
    quotas: dict[str, QuotaLimits] = Field(
        description="Each tenant's limits in this pool (tenants without: no limit)."
    )
    held_by_tenant: dict[str, Amounts] = Field(
        description="What each tenant holds now (allocations without a tenant: not "
        "counted here)."
    )
    worker_enforcement: dict[str, str] | str = Field(
        RESERVED_SLOTS_ONLY,
        description=(
            'How workers are held to their size: {"memory": "cgroup-v2", '
            '"cgroup-v1" or "rlimit-as", "cpu": "cgroup-v2", "cgroup-v1" or '
            '"none"} (and a "note" when one fell back) when the pool runs its '
            'workers as processes (a worker_command), else "reserved slots only".'
        ),
    )


# set_capacity's answer: the capacity afterwards, and whether it changed. (A
# docstring would add a description to the tool's published output schema.)
class SetCapacityResult(CapacityResult):
    changed: bool = Field(description="False when the totals were already these.")


def capacity_result(view: CapacityView) -> CapacityResult:
    """get_capacity's answer, from the pool's capacity read model."""
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
                cost=None if s.cost is None else amounts(s.cost),
            )
            for s in servers
        ],
        free_mcp_ports=free_mcp_ports(view.ports, (s.port for s in servers)),
        mcp_ports=view.ports.mcp,
        worker_ports=view.ports.workers,
        worker_size=amounts(view.worker_size),
        idle_timeout_seconds=view.idle_timeout_seconds,
        updated_at=view.updated_at,
        queue_length=len(view.queue),
        queue_policy=view.queue_policy,
        aging_seconds=view.aging_seconds,
        preemption=preemption_rules(view),
        cross_tenant_preemption=cross_tenant_name(view),
        quotas=tenant_quotas(view),
        held_by_tenant=tenant_holdings(view),
    )
