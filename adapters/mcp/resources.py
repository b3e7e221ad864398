"""The MCP resources: a pool's capacity, an allocation and its history, as JSON."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)
from pydantic import BaseModel

from allocation_ledger.adapters.http.auth import Access
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    LedgerError,
    PoolNotFoundError,
)
from allocation_ledger.domain.tenancy import Visibility

Reader = Callable[[str, Visibility], BaseModel]
"""Builds a resource's answer for a name, for a caller who sees `Visibility`."""


async def _resource(
    access: Access, uri: str, work: Callable[[Visibility], BaseModel]
) -> str:
    """A resource's JSON, read with `work` if the caller may read, as the
    caller sees it (another tenant's allocation reads as unknown)."""
    try:
        caller = access.caller("read", f"reading {uri}")
    except ToolError as error:
        raise ResourceError(str(error)) from error
    try:
        model = await anyio.to_thread.run_sync(work, caller.visibility)
    except (AllocationNotFoundError, PoolNotFoundError) as error:
        raise ResourceNotFoundError(str(error)) from error
    except LedgerError as error:
        raise ResourceError(str(error)) from error
    return model.model_dump_json(indent=2)


def register_resources(
    server: MCPServer[Any],
    access: Access,
    *,
    capacity: Reader,
    detail: Reader,
    history: Reader,
) -> None:
    """The ledger's resources: a pool's capacity, an allocation, its history.

    Each reads as the tool of the same name answers (`capacity`, `detail`
    and `history` build those answers), with the read scope and the
    caller's view of tenants.
    """

    @server.resource(
        "ledger://pools/{pool}/capacity",
        name="pool_capacity",
        title="Pool capacity",
        description="A pool's capacity as get_capacity returns it (JSON).",
        mime_type="application/json",
    )
    async def pool_capacity(pool: str) -> str:
        return await _resource(
            access,
            f"ledger://pools/{pool}/capacity",
            lambda seen: capacity(pool, seen),
        )

    @server.resource(
        "ledger://allocations/{allocation_id}",
        name="allocation",
        title="Allocation",
        description="One allocation as get_allocation returns it (JSON).",
        mime_type="application/json",
    )
    async def allocation(allocation_id: str) -> str:
        return await _resource(
            access,
            f"ledger://allocations/{allocation_id}",
            lambda seen: detail(allocation_id, seen),
        )

    @server.resource(
        "ledger://allocations/{allocation_id}/history",
        name="allocation_history",
        title="Allocation history",
        description=(
            "Every event of one allocation, as get_allocation_history "
            "returns it (JSON)."
        ),
        mime_type="application/json",
    )
    async def allocation_history(allocation_id: str) -> str:
        return await _resource(
            access,
            f"ledger://allocations/{allocation_id}/history",
            lambda seen: history(allocation_id, seen),
        )
