"""The MCP resources: a pool's capacity, an allocation and its history, as
JSON; and what resources/list lists of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_REQUEST, CallToolResult
from mcp_types import Resource as MCPResource
from pydantic import BaseModel

from allocation_ledger.adapters.http.auth import Access
from allocation_ledger.adapters.storage.store_errors import is_store_error, store_cause
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    LedgerError,
    PoolNotFoundError,
)
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.projections.queries import ReadModels
from allocation_ledger.projections.store import UNFINISHED_STATES

JSON = "application/json"

POOL_CAPACITY_URI = "ledger://pools/{pool}/capacity"
"""A pool's capacity resource: the template served, and the URI subscribed to."""
ALLOCATION_URI = "ledger://allocations/{allocation_id}"
"""An allocation's resource: the template served, and the URI subscribed to."""


def pool_capacity_uri(pool: str) -> str:
    """The URI of a pool's capacity resource."""
    return POOL_CAPACITY_URI.format(pool=pool)


def allocation_uri(allocation_id: str) -> str:
    """The URI of an allocation's resource."""
    return ALLOCATION_URI.format(allocation_id=allocation_id)


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
    except Exception as error:
        if not is_store_error(error):
            raise
        raise ResourceError(store_cause(error, None)) from error
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
        POOL_CAPACITY_URI,
        name="pool_capacity",
        title="Pool capacity",
        description="A pool's capacity as get_capacity returns it (JSON).",
        mime_type=JSON,
    )
    async def pool_capacity(pool: str) -> str:
        return await _resource(
            access,
            pool_capacity_uri(pool),
            lambda seen: capacity(pool, seen),
        )

    @server.resource(
        ALLOCATION_URI,
        name="allocation",
        title="Allocation",
        description="One allocation as get_allocation returns it (JSON).",
        mime_type=JSON,
    )
    async def allocation(allocation_id: str) -> str:
        return await _resource(
            access,
            allocation_uri(allocation_id),
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
        mime_type=JSON,
    )
    async def allocation_history(allocation_id: str) -> str:
        return await _resource(
            access,
            f"ledger://allocations/{allocation_id}/history",
            lambda seen: history(allocation_id, seen),
        )


class ResourceListing:
    """What resources/list answers: every pool's capacity resource, then the
    caller's unfinished allocations (queued, pending, active, releasing), in
    request order.

    `pools` names the pools (blocking; run off the event loop).
    `list_allocations` is the list_allocations tool itself, so the
    allocations listed are exactly those that tool shows this caller (its
    scope check and any filter by tenant apply); one page of it per state,
    so at most 1,000 allocations of each state are listed (list_allocations
    pages through the rest). Listing needs the read scope.
    """

    def __init__(
        self,
        access: Access,
        *,
        pools: Callable[[], list[str]],
        list_allocations: Callable[..., Awaitable[CallToolResult]],
    ) -> None:
        self.access = access
        self.pools = pools
        self.list_allocations = list_allocations

    async def __call__(self) -> list[MCPResource]:
        try:
            self.access.actor("read", "listing resources")
            pools = await anyio.to_thread.run_sync(self.pools)
            listed: list[dict[str, Any]] = []
            for state in UNFINISHED_STATES:
                page = await self.list_allocations(state=state.value)
                listed.extend((page.structured_content or {}).get("allocations", []))
        except ToolError as error:
            raise MCPError(code=INVALID_REQUEST, message=str(error)) from error
        listed.sort(key=lambda item: int(item["sequence"]))
        return [*map(_capacity_resource, pools), *map(_allocation_resource, listed)]


def pool_names(read_models: ReadModels) -> list[str]:
    """Every pool's name, the default pool first (it reads as new before
    its first use); blocking."""
    names = [view.pool for view in read_models.capacities()]
    return [DEFAULT_POOL, *(name for name in names if name != DEFAULT_POOL)]


def _capacity_resource(pool: str) -> MCPResource:
    return MCPResource(
        uri=pool_capacity_uri(pool),
        name=f"pool-{pool}-capacity",
        title=f"Capacity of pool {pool}",
        description=f"Pool {pool}'s capacity as get_capacity returns it (JSON).",
        mime_type=JSON,
    )


def _allocation_resource(item: dict[str, Any]) -> MCPResource:
    allocation_id = item["allocation_id"]
    return MCPResource(
        uri=allocation_uri(allocation_id),
        name=allocation_id,
        title=f"Allocation {allocation_id} of job {item['job_id']} ({item['state']})",
        description=(
            f"Allocation {allocation_id} (pool {item['pool']}, {item['state']}) "
            "as get_allocation returns it (JSON)."
        ),
        mime_type=JSON,
    )
