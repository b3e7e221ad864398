"""What get_usage takes and answers: each job's use of a pool over a period."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.units import Moment, UtcTime

SinceArg = Annotated[
    Moment | None,
    Field(description="Start of the period (ISO 8601); omit for the beginning."),
]
UntilArg = Annotated[
    Moment | None,
    Field(description="End of the period (ISO 8601, exclusive); omit for now."),
]


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


# get_usage's answer (no docstring: it would add a description to the tool's
# published output schema).
class UsageResult(BaseModel):
    usage: list[UsageRowResult]
    count: int
    since: UtcTime | None
    until: UtcTime
