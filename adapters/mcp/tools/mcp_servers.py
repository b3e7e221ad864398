"""The MCP server tools: list_mcp_servers and get_mcp_status.

Each server is shown from the pool's capacity read model (port, references,
idle since: what the ledger decided) and, under the process provisioner,
from its ServerProcess record (what happened to its process: pid, restarts,
last exit) and, when this ledger process runs it, the live process info.
"""

from __future__ import annotations

from typing import Literal

from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.mcp.schemas.mcp_servers import (
    LastExit,
    McpServerInfo,
    McpServerList,
    McpServerState,
    ServerNameArg,
    ServerPoolArg,
    ServerPoolFilterArg,
)
from allocation_ledger.adapters.mcp.tools.group import ToolGroup
from allocation_ledger.adapters.provisioning.local import url_host
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.projections.views import ServerView

_LIVE_STATUS: dict[str, McpServerState] = {
    "starting": "starting",
    "stopping": "stopping",
    "stopped": "stopped",
    "failed": "failed",
}
"""A live process status that overrides the pool's running/idle."""


class McpServerTools(ToolGroup):
    """Show the MCP servers of the pools and the status of their processes."""

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
                self._info(view.pool, name, recorded[name]) for name in sorted(recorded)
            ]
            for name in sorted(self.service.settings.catalog.mcp_servers):
                if name in recorded or not self._ran(view.pool, name):
                    continue
                shown.append(self._info(view.pool, name, None))
        return McpServerList(servers=shown, provisioner=self._provisioner_kind())

    def status(self, name: str, pool: str) -> McpServerInfo:
        """get_mcp_status' answer."""
        view = self._capacity_view(pool)
        if name in view.servers:
            return self._info(pool, name, view.servers[name])
        known = self.service.settings.catalog.mcp_servers
        if name not in known and not self._ran(pool, name):
            has = ", ".join(sorted(known)) or "no MCP servers"
            msg = (
                f'unknown MCP server "{name}" in pool {pool!r}: this ledger\'s '
                f"catalog has {has}"
            )
            raise ToolError(msg)
        return self._info(pool, name, None)

    def _provisioner_kind(self) -> Literal["process", "endpoints"]:
        if isinstance(self.ledger.provisioner, ProcessProvisioner):
            return "process"
        return "endpoints"

    def _ran(self, pool: str, name: str) -> bool:
        if not isinstance(self.ledger.provisioner, ProcessProvisioner):
            return False
        return self.ledger.server_process(pool, name) is not None

    def _info(self, pool: str, name: str, server: ServerView | None) -> McpServerInfo:
        """One server: the pool's record (`server`, None when the pool does
        not record it now), its ServerProcess record, its live process."""
        status = _recorded_status(server)
        port = None if server is None else server.port
        started_at = None if server is None else server.started_at
        pid: int | None = None
        restarts = 0
        last_exit: LastExit | None = None
        provisioner = self.ledger.provisioner
        if isinstance(provisioner, ProcessProvisioner):
            record = self.ledger.server_process(pool, name)
            if record is not None:
                port = port if port is not None else record.port
                restarts = record.restarts
                last_exit = LastExit.of(record.last_exit)
                if server is not None:
                    pid = record.pid
                    started_at = record.started_at or started_at
                    if record.status == "starting":
                        status = "starting"
                    elif record.status == "failed":
                        status = "failed"
                elif record.status == "failed":
                    status = "failed"
            info = provisioner.server_info(pool, name)
            if info is not None and (port is None or info.port == port):
                port, pid = info.port, info.pid
                started_at = info.started_at or started_at
                restarts = max(restarts, info.restarts)
                if info.status == "running":
                    status = _recorded_status(server)
                elif not (info.status == "stopped" and status == "failed"):
                    # (the stop of a server whose process had already failed
                    # does not hide that it failed)
                    status = _LIVE_STATUS.get(info.status, status)
                if info.last_exit is not None and last_exit is None:
                    last_exit = LastExit(
                        code=info.last_exit.code, signal=info.last_exit.signal
                    )
        return McpServerInfo(
            name=name,
            pool=pool,
            port=port,
            endpoint=None if port is None else self._endpoint(pool, name, port),
            status=status,
            references=0 if server is None else server.references,
            pid=pid,
            started_at=started_at,
            idle_since=None if server is None else server.idle_since,
            restarts=restarts,
            last_exit=last_exit,
        )

    def _endpoint(self, pool: str, name: str, port: int) -> str:
        catalog = self.service.settings.catalog
        entry = catalog.pools.get(pool)
        host = entry.advertise_host if entry is not None else "localhost"
        server = catalog.mcp_servers.get(name)
        path = server.path if server is not None else ""
        return f"http://{url_host(host)}:{port}{path}"


def _recorded_status(server: ServerView | None) -> McpServerState:
    """What the pool's record says: running (in use), idle, or stopped."""
    if server is None:
        return "stopped"
    return "running" if server.references > 0 else "idle"
