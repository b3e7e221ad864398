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
from allocation_ledger.adapters.storage.store_errors import is_store_error, store_cause
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    LedgerError,
    PoolNotFoundError,
)


async def _resource(access: Access, uri: str, work: Callable[[], BaseModel]) -> str:
    """A resource's JSON, read with `work` if the caller may read."""
    try:
        access.actor("read", f"reading {uri}")
    except ToolError as error:
        raise ResourceError(str(error)) from error
    try:
        model = await anyio.to_thread.run_sync(work)
    except (AllocationNotFoundError, PoolNotFoundError) as error:
        raise ResourceNotFoundError(str(error)) from error
    except LedgerError as error:
        raise ResourceError(str(error)) from error
    except Exception as error:
        if not is_store_error(error):
            raise
        raise ResourceError(store_cause(error, None)) from error
    return model.model_dump_json(indent=2)


def register_resources(
    server: MCPServer[Any],
    access: Access,
    *,
    capacity: Callable[[str], BaseModel],
    detail: Callable[[str], BaseModel],
    history: Callable[[str], BaseModel],
) -> None:
    """The ledger's resources: a pool's capacity, an allocation, its history.

    Each reads as the tool of the same name answers (`capacity`, `detail`
    and `history` build those answers), with the read scope.
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
            access, f"ledger://pools/{pool}/capacity", lambda: capacity(pool)
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
            lambda: detail(allocation_id),
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
            lambda: history(allocation_id),
        )
