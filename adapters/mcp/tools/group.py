"""What every group of MCP tools has: the service, the access policy, and the
plumbing between a tool call and the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.http.auth import Access
from allocation_ledger.adapters.mcp.tools.specs import TOOLS
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.errors import LedgerError, PoolNotFoundError
from allocation_ledger.domain.pool_settings import DEFAULT_WORKER_SIZE
from allocation_ledger.domain.values import Resources
from allocation_ledger.projections.views import CapacityView

T = TypeVar("T")


class ToolGroup:
    """What every group of tools shares: one service, one access policy, and
    the steps each tool takes (run ledger work off the event loop, check the
    caller's scope, read a pool's capacity)."""

    def __init__(self, service: AllocationService, access: Access) -> None:
        self.service = service
        self.ledger = service.ledger
        self.read = service.read_models
        self.access = access

    async def _call(self, work: Callable[[], T]) -> T:
        """Run ledger work off the event loop; domain errors become ToolErrors."""
        try:
            return await anyio.to_thread.run_sync(work)
        except LedgerError as error:
            raise ToolError(str(error)) from error

    def _actor(self, tool: str) -> str:
        return self.access.actor(TOOLS[tool].scope, tool)

    def _capacity_view(self, pool: str, *, caught_up: bool = False) -> CapacityView:
        """A pool's capacity; `caught_up` skips catching up (just done)."""
        view = self.read.store.get_capacity(pool) if caught_up else None
        if view is None:
            view = self.read.capacity(pool)
        if view is None:
            raise PoolNotFoundError(pool)
        return view

    def _worker_size(self, pool: str, *, caught_up: bool = False) -> Resources:
        try:
            return self._capacity_view(pool, caught_up=caught_up).worker_size
        except PoolNotFoundError:
            return DEFAULT_WORKER_SIZE
