"""The MCP server tools: list_mcp_servers and get_mcp_status.

What each says of a server is server_status.py's `ServerStatuses`, which
the updates of an allocation's subscribers share.
"""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.http.auth import Access
from allocation_ledger.adapters.mcp.schemas.mcp_servers import (
    McpServerInfo,
    McpServerList,
    ServerNameArg,
    ServerPoolArg,
    ServerPoolFilterArg,
)
from allocation_ledger.adapters.mcp.tools.group import ToolGroup
from allocation_ledger.adapters.mcp.tools.server_status import ServerStatuses
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.pool import DEFAULT_POOL


class McpServerTools(ToolGroup):
    """Show the MCP servers of the pools and the status of their processes."""

    def __init__(self, service: AllocationService, access: Access) -> None:
        super().__init__(service, access)
        self.statuses = ServerStatuses(service)

    async def list_mcp_servers(self, pool: ServerPoolFilterArg = None) -> McpServerList:
        """List the MCP servers of a pool (or of every pool) and their status.

        Each: name, pool, port, endpoint, status (starting, running, idle,
        stopping, stopped, failed), references (live allocations using it),
        pid, started_at, idle_since, restarts and last_exit. Servers the pool
        runs or keeps idle come first; servers of the catalog that ran in the
        pool before and are stopped or failed now follow. An unknown pool is
        an error.
        """
        self._actor("list_mcp_servers")
        return await self._call(lambda: self.servers(pool))

    async def get_mcp_status(
        self, name: ServerNameArg, pool: ServerPoolArg = DEFAULT_POOL
    ) -> McpServerInfo:
        """Show one MCP server of a pool: its port, endpoint, status
        (starting, running, idle, stopping, stopped, failed), references,
        pid, started_at, idle_since, restarts and how its last process ended.

        A server of the catalog that never ran in the pool is "stopped" with
        no port. A name that is neither in the catalog nor recorded in the
        pool is an error.
        """
        self._actor("get_mcp_status")
        return await self._call(lambda: self.status(name, pool))

    # -- blocking ------------------------------------------------------------

    def servers(self, pool: str | None) -> McpServerList:
        """list_mcp_servers' answer."""
        views = self.read.capacities()
        if pool is not None:
            views = [self._capacity_view(pool)]
        shown: list[McpServerInfo] = []
        for view in views:
            recorded = view.servers
            shown += [
                self.statuses.info(view.pool, name, recorded[name])
                for name in sorted(recorded)
            ]
            for name in sorted(self.service.settings.catalog.mcp_servers):
                if name in recorded or not self.statuses.ran(view.pool, name):
                    continue
                shown.append(self.statuses.info(view.pool, name, None))
        return McpServerList(
            servers=shown, provisioner=self.statuses.provisioner_kind()
        )

    def status(self, name: str, pool: str) -> McpServerInfo:
        """get_mcp_status' answer."""
        view = self._capacity_view(pool)
        if name in view.servers:
            return self.statuses.info(pool, name, view.servers[name])
        known = self.service.settings.catalog.mcp_servers
        if name not in known and not self.statuses.ran(pool, name):
            has = ", ".join(sorted(known)) or "no MCP servers"
            msg = (
                f'unknown MCP server "{name}" in pool {pool!r}: this ledger\'s '
                f"catalog has {has}"
            )
            raise ToolError(msg)
        return self.statuses.info(pool, name, None)
