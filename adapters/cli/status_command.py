"""`allocation-ledger status`: every pool's capacity, its MCP servers with
their processes, and how its workers are held to their size.

With --json the pools read as get_capacity answers them (cores, MB), under
the ledger they were read from.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from allocation_ledger.adapters.cli.console import capacity_summary_table
from allocation_ledger.adapters.mcp.schemas.capacity import capacity_result
from allocation_ledger.adapters.storage.ledger_file import (
    ledger_description,
    ledger_location,
)
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    data_directory,
)
from allocation_ledger.projections.views import CapacityView


def worker_enforcement(service: AllocationService, pool: str) -> dict[str, str] | str:
    """How the pool's workers are held to their size on this machine: the
    mechanisms (probed as the worker supervisor probes them) when the catalog
    gives the pool a worker_command, else "reserved slots only"."""
    settings = service.settings
    entry = settings.catalog.pools.get(pool)
    if entry is None or not entry.worker_command:
        return "reserved slots only"
    if settings.catalog.effective_provisioner != "process":
        return "reserved slots only"
    from allocation_ledger.adapters.provisioning.limits import Limiter, group_name

    limiter = Limiter.detect(group_name(data_directory(settings)))
    try:
        return limiter.enforcement.as_dict()
    finally:
        limiter.close()


GONE = "exited while no ledger server watched it"
"""What status says of a recorded process that no longer runs here."""


def server_processes(
    service: AllocationService, view: CapacityView
) -> list[dict[str, Any]]:
    """The pool's MCP servers with what happened to their processes (the
    ServerProcess records): name, port, status, references, pid, restarts,
    and `process_alive`: whether the recorded process still runs, checked
    where this machine started it (its state file in the data directory),
    else None (another machine's, or none recorded). The ledger records an
    exit only while a server watches the process; one that died meanwhile is
    shown as such here, and recorded when the next `serve` reconciles."""
    from allocation_ledger.adapters.provisioning import process_control
    from allocation_ledger.adapters.provisioning.run_records import RunRecords

    started_here = RunRecords(data_directory(service.settings) / "run")
    shown: list[dict[str, Any]] = []
    for name in sorted(view.servers):
        server = view.servers[name]
        record = service.ledger.server_process(view.pool, name)
        status = "running" if server.references > 0 else "idle"
        if record is not None and record.status in ("starting", "failed"):
            status = record.status
        pid = None if record is None else record.pid
        alive: bool | None = None
        state_file = started_here.read(view.pool, name)
        if pid is not None and state_file is not None and state_file.pid == pid:
            alive = process_control.is_same_process(
                pid, state_file.argv, state_file.start_ticks
            )
        shown.append(
            {
                "name": name,
                "port": server.port,
                "status": status,
                "references": server.references,
                "pid": pid,
                "process_alive": alive,
                "restarts": 0 if record is None else record.restarts,
            }
        )
    return shown


def pool_status(service: AllocationService, view: CapacityView) -> dict[str, Any]:
    """One pool as get_capacity answers (cpu in cores, memory in MB), with
    its worker enforcement and its MCP servers' processes."""
    result = capacity_result(view)
    result.worker_enforcement = worker_enforcement(service, view.pool)
    return result.model_dump(mode="json") | {
        "mcp_server_processes": server_processes(service, view)
    }


def run_status(service: AllocationService, console: Console, *, as_json: bool) -> None:
    """Every pool (the default one, as new, before any was used), as tables
    under a line naming the ledger, or (`as_json`) as
    `{"ledger": {store, location, read_only}, "pools": [...]}`."""
    views = service.read_models.capacities()
    if not views:
        default = service.read_models.capacity()
        views = [] if default is None else [default]
    pools = [pool_status(service, view) for view in views]
    if as_json:
        ledger = ledger_description(service.settings, read_only=service.read_only)
        print(json.dumps({"ledger": ledger, "pools": pools}, indent=2))
        return
    mode = " (read-only)" if service.read_only else ""
    console.print(
        f"ledger: {service.settings.store} {ledger_location(service.settings)}{mode}",
        highlight=False,
        soft_wrap=True,
    )
    for pool in pools:
        console.print(capacity_summary_table(pool))
        enforcement = pool["worker_enforcement"]
        if isinstance(enforcement, dict):
            said = ", ".join(f"{k}: {v}" for k, v in enforcement.items())
        else:
            said = enforcement
        console.print(f"workers of pool {pool['pool']!r}: {said}")
        for server in pool["mcp_server_processes"]:
            pid = f"pid {server['pid'] or '-'}"
            if server["process_alive"] is False:
                pid += f" ({GONE}; the next `serve` records it)"
            console.print(
                f"  MCP server {server['name']} on port {server['port']}: "
                f"{server['status']}, {server['references']} allocation(s), "
                f"{pid}, restarts {server['restarts']}"
            )
