"""What the ledger says of one MCP server of a pool now: get_mcp_status's
and list_mcp_servers' answer for it, and the same words in the updates an
allocation's subscribers get when one of its servers changes.

Each server is shown from the pool's capacity read model (port, references,
idle since: what the ledger decided) and, under the process provisioner,
from its ServerProcess record (what happened to its process: pid, restarts,
last exit) and, when this ledger process runs it, the live process info.
"""

from __future__ import annotations

import logging
from typing import Literal

from allocation_ledger.adapters.mcp.schemas.mcp_servers import (
    LastExit,
    McpServerInfo,
    McpServerState,
)
from allocation_ledger.adapters.provisioning.local import url_host
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.projections.changes import ServerNow
from allocation_ledger.projections.views import ServerView

logger = logging.getLogger("allocation_ledger.mcp")

_LIVE_STATUS: dict[str, McpServerState] = {
    "starting": "starting",
    "stopping": "stopping",
    "stopped": "stopped",
    "failed": "failed",
}
"""A live process status that overrides the pool's running/idle."""

DOWN: frozenset[McpServerState] = frozenset({"stopped", "failed"})
"""Statuses of a server that does not run: `ServerNow` says how it ended."""


class ServerStatuses:
    """The status of the MCP servers of one service's pools (module docstring)."""

    def __init__(self, service: AllocationService) -> None:
        self.service = service
        self.ledger = service.ledger

    def provisioner_kind(self) -> Literal["process", "endpoints"]:
        """process: the ledger runs the servers; endpoints: addresses only."""
        if isinstance(self.ledger.provisioner, ProcessProvisioner):
            return "process"
        return "endpoints"

    def ran(self, pool: str, name: str) -> bool:
        """Whether the process provisioner ever reported a process of it."""
        if not isinstance(self.ledger.provisioner, ProcessProvisioner):
            return False
        return self.ledger.server_process(pool, name) is not None

    def now(self, pool: str, name: str) -> ServerNow | None:
        """What get_mcp_status(name, pool) says now, for an update: its
        status, endpoint, and how its last process ended when it is stopped
        or failed. None when the pool is unknown, or the status could not be
        read (logged: the update goes out without it). Blocking."""
        try:
            capacity = self.service.read_models.capacity(pool)
            if capacity is None:
                return None
            info = self.info(pool, name, capacity.servers.get(name))
        except Exception:  # - an update without the status beats none at all
            logger.exception("reading the status of MCP server %r of %r", name, pool)
            return None
        ended = info.last_exit if info.status in DOWN else None
        return ServerNow(
            status=info.status,
            endpoint=info.endpoint,
            last_exit=None if ended is None else ended.model_dump(exclude_none=True),
        )

    def info(self, pool: str, name: str, server: ServerView | None) -> McpServerInfo:
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
