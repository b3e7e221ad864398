"""What several allocation results share: fields left out when empty, the
queue deadline, who preempted it, and the MCP servers and workers it uses.

request_resources, get_allocation and list_allocations answer with these, so
a client reads the same field the same way in each.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.units import UtcTime, cores
from allocation_ledger.domain.provisioner import ServerSlot, WorkerSlot
from allocation_ledger.domain.values import AllocationState, Resources
from allocation_ledger.projections.views import ServerUseView, WorkerView

T = TypeVar("T")


def _omit_if_none(value: object) -> bool:
    return value is None


OmittedIfNone = Annotated[T | None, Field(exclude_if=_omit_if_none)]
"""A field left out of the answer while it is None (give it the default None)."""

QueueDeadline = Annotated[
    UtcTime | None,
    Field(description="While queued: when it fails with queue_timeout (null: never)."),
]
"""When a queued request fails with queue_timeout; null while it may wait on."""

PreemptedBy = Annotated[
    OmittedIfNone[str],
    Field(description="Only when preempted: the allocation that took its capacity."),
]
"""The allocation that took a preempted one's capacity (give it the default None)."""


class ServerEndpoint(BaseModel):
    """An MCP server as one allocation uses it."""

    name: str
    endpoint: str | None
    status: str = Field(
        description=(
            "running, pending, stopping, released, failed or planned (dry run). "
            "In get_allocation, while the allocation is active and the ledger "
            "runs its servers as processes: the process's live status, "
            "running, restarting (it exited and is being started again) or "
            "failed (it exited and could not be brought back)."
        )
    )
    port: int
    started: bool = Field(
        description="True if this allocation started the server, false if shared."
    )
    pid: OmittedIfNone[int] = Field(
        None, description="get_allocation only: the server's process id, if known."
    )
    restarts: OmittedIfNone[int] = Field(
        None,
        description="get_allocation only: restarts after exits since it was started.",
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
    pid: OmittedIfNone[int] = Field(
        None,
        description=(
            "get_allocation only, when the pool runs its workers as processes: "
            "the worker's process id."
        ),
    )
    state: OmittedIfNone[str] = Field(
        None,
        description=(
            "get_allocation only, when the pool runs its workers as processes: "
            "starting (its allocation waits until it is ready), running, "
            "exited (it ended by itself or was killed) or stopped "
            "(stopped at release, expiry or preemption). A worker that exited "
            "is not restarted, and the allocation's status does not change."
        ),
    )
    cause: OmittedIfNone[str] = Field(
        None,
        description=(
            "Why an exited or stopped worker ended: exited (with exit_code), "
            "signal, memory_limit (killed or failed for passing its memory), "
            "stopped, unknown."
        ),
    )
    exit_code: OmittedIfNone[int] = Field(
        None, description="The exit code of a worker that exited with one."
    )
    signal: OmittedIfNone[int] = Field(
        None, description="The signal that ended the worker, if one did."
    )


_SERVER_STATUS: dict[AllocationState, str] = {
    AllocationState.QUEUED: "queued",
    AllocationState.PREEMPTED: "released",
    AllocationState.PENDING: "pending",
    AllocationState.ACTIVE: "running",
    AllocationState.RELEASING: "stopping",
    AllocationState.RELEASED: "released",
    AllocationState.EXPIRED: "released",
    AllocationState.FAILED: "failed",
}


_WORKER_STATUS: dict[AllocationState, str] = {
    AllocationState.QUEUED: "queued",
    AllocationState.PREEMPTED: "released",
    AllocationState.PENDING: "pending",
    AllocationState.ACTIVE: "active",
    AllocationState.RELEASING: "destroying",
    AllocationState.RELEASED: "released",
    AllocationState.EXPIRED: "released",
    AllocationState.FAILED: "failed",
}


def server_endpoint(
    server: ServerSlot | ServerUseView,
    endpoint: str | None,
    state: AllocationState,
    *,
    planned: bool = False,
) -> ServerEndpoint:
    """An MCP server as one allocation in `state` uses it, reached at `endpoint`;
    `planned` for a dry run that would be granted."""
    return ServerEndpoint(
        name=server.name,
        endpoint=endpoint,
        status="planned" if planned else _SERVER_STATUS[state],
        port=server.port,
        started=server.started,
    )


def worker_endpoint(
    worker: WorkerSlot | WorkerView,
    endpoint: str | None,
    state: AllocationState,
    size: Resources,
    *,
    planned: bool = False,
) -> WorkerEndpoint:
    """A worker of one allocation in `state`, reached at `endpoint` and worth
    `size`; `planned` for a dry run that would be granted."""
    return WorkerEndpoint(
        worker_id=worker.worker_id,
        endpoint=endpoint,
        status="planned" if planned else _WORKER_STATUS[state],
        cpu=cores(size.cpu_millicores),
        memory=size.memory_mib,
        port=worker.port,
    )
