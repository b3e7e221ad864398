"""What several allocation results share: the MCP servers and workers an
allocation uses, and their status.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from allocation_ledger.domain.values import AllocationState


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


SERVER_STATUS = {
    AllocationState.QUEUED: "queued",
    AllocationState.PREEMPTED: "released",
    AllocationState.PENDING: "pending",
    AllocationState.ACTIVE: "running",
    AllocationState.RELEASING: "stopping",
    AllocationState.RELEASED: "released",
    AllocationState.EXPIRED: "released",
    AllocationState.FAILED: "failed",
}


WORKER_STATUS = {
    AllocationState.QUEUED: "queued",
    AllocationState.PREEMPTED: "released",
    AllocationState.PENDING: "pending",
    AllocationState.ACTIVE: "active",
    AllocationState.RELEASING: "destroying",
    AllocationState.RELEASED: "released",
    AllocationState.EXPIRED: "released",
    AllocationState.FAILED: "failed",
}
