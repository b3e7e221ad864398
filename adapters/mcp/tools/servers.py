"""What the allocation tools add when the ledger runs MCP servers and workers
itself: the check of server names against the catalog, the live status of a
server's process in get_allocation, and each worker's process (pid, state,
cause) there."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.mcp.schemas.allocation_listing import (
    AllocationDetail,
)
from allocation_ledger.adapters.provisioning.catalog_specs import (
    unknown_servers_message,
)
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.provisioner import Provisioner

LIVE_SERVER_STATUS = {"starting": "restarting"}
"""How a server process's status reads in an active allocation's detail (a
process of an active allocation that is starting is being restarted)."""


def check_servers_known(catalog: Catalog, names: list[str]) -> None:
    """With a catalog that names MCP servers (or the process provisioner), a
    request naming a server not in it is refused before the ledger is asked:
    a ToolError naming the known servers, and nothing reserved."""
    if not catalog.mcp_servers and catalog.effective_provisioner != "process":
        return
    unknown = [name for name in names if name not in catalog.mcp_servers]
    if unknown:
        raise ToolError(unknown_servers_message(unknown, list(catalog.mcp_servers)))


def show_live_servers(detail: AllocationDetail, provisioner: Provisioner) -> None:
    """Put the live status of each server's process (running, restarting,
    failed, stopped), its pid and restarts in an active allocation's detail,
    when the ledger runs the servers on this machine."""
    if not isinstance(provisioner, ProcessProvisioner):
        return
    for server in detail.mcp_servers:
        info = provisioner.server_info(detail.pool, server.name)
        if info is not None and info.port == server.port:
            server.status = LIVE_SERVER_STATUS.get(info.status, info.status)
            server.pid, server.restarts = info.pid, info.restarts


def show_workers(detail: AllocationDetail, ledger: Ledger) -> None:
    """Put each worker's process (pid, state, cause, exit code or signal) in
    an allocation's detail, when its pool runs workers as processes: from the
    ledger's WorkerProcess record (what the provisioner saw happen, durable
    across restarts of the ledger). A worker with no record yet shows none;
    one that runs but is not yet ready, while its allocation is pending,
    shows `starting`."""
    provisioner = ledger.provisioner
    if not isinstance(provisioner, ProcessProvisioner):
        return
    if not provisioner.runs_workers(detail.pool):
        return
    for worker in detail.workers:
        record = ledger.worker_process(worker.worker_id)
        if record is None:
            continue
        worker.pid, worker.state = record.pid, record.status
        waiting = detail.state == "pending" and record.ready_at is None
        if record.status == "running" and waiting:
            worker.state = "starting"
        if record.status != "running":
            ended = record.last_exit or {}
            worker.cause = record.cause
            worker.exit_code = ended.get("code")
            worker.signal = ended.get("signal")
