"""What list_mcp_servers and get_mcp_status answer: each MCP server of a pool
with the pool's record (port, references, since when idle) and what happened
to its process (status, pid, restarts, last exit)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.allocation_arguments import PoolName
from allocation_ledger.adapters.mcp.schemas.units import UtcTime

McpServerState = Literal["starting", "running", "idle", "stopping", "stopped", "failed"]

ServerNameArg = Annotated[
    str,
    Field(description="The MCP server's name, as request_resources names it."),
]
ServerPoolArg = Annotated[
    PoolName, Field(description="The pool whose instance of the server to show.")
]
ServerPoolFilterArg = Annotated[
    PoolName | None,
    Field(description="Only this pool's servers; every pool's when left out."),
]


class LastExit(BaseModel):
    """How the server's last process ended."""

    code: int | None = Field(None, description="Its exit code, if it exited.")
    signal: int | None = Field(None, description="The signal that ended it, if any.")
    forced: bool | None = Field(
        None, description="A stop needed SIGKILL (it ignored SIGTERM)."
    )
    reason: str | None = Field(None, description="Why, when one was recorded.")

    @classmethod
    def of(cls, detail: dict[str, Any] | None) -> LastExit | None:
        if not detail:
            return None
        return cls(
            code=detail.get("code"),
            signal=detail.get("signal"),
            forced=detail.get("forced"),
            reason=detail.get("reason"),
        )


class McpServerInfo(BaseModel):
    """One MCP server of one pool."""

    name: str
    pool: str
    port: int | None = Field(
        description="The port the pool gives it (its last one when stopped)."
    )
    endpoint: str | None = Field(description="Where agents reach it.")
    status: McpServerState = Field(
        description=(
            "starting (its process is started, or restarted after an exit, and "
            "does not answer yet), running (in use), idle (no allocation uses "
            "it; stopped after the pool's idle timeout), stopping, stopped, "
            "failed (its start failed, or it exited too often to restart)."
        )
    )
    references: int = Field(description="Live allocations using it.")
    pid: int | None = Field(description="Its process id, while one runs.")
    started_at: UtcTime | None = Field(
        description="When its current (or last) process started, or the pool "
        "recorded it started."
    )
    idle_since: UtcTime | None
    restarts: int = Field(description="Restarts after exits.")
    last_exit: LastExit | None = Field(
        description="How its last process ended, if one did."
    )


class McpServerList(BaseModel):
    """The MCP servers of one pool, or of every pool."""

    servers: list[McpServerInfo]
    provisioner: Literal["process", "endpoints"] = Field(
        description=(
            "process: the ledger runs the servers on its machine; endpoints: "
            "it only hands out addresses (no process status is known)."
        )
    )
