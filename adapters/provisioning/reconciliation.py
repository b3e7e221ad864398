"""Reconciliation at start-up: the processes on this machine made what the
ledger records.

When `serve` starts with the process provisioner, before it answers its
first request, `ProcessProvisioner.reconcile` runs these two steps (see
docs/provisioning.md, "Reconciliation" and "Restarts of the ledger"):

- `reconcile_servers`: every MCP server a pool records as running or idle
  gets exactly one live process (adopted from an earlier run of the same
  data directory, or started again); every other process an earlier run
  left is stopped; a recorded server that cannot be started and that no
  live allocation uses is recorded stopped in its pool (its port free).
- `reconcile_workers`: the workers of live allocations an earlier run left
  running are adopted; those no live allocation holds are stopped; those
  gone are recorded `exited`, and started again when their allocation is
  active and their cause is `unknown` (`start_again`).

Each returns one line per outcome, for the log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from allocation_ledger.adapters.provisioning.catalog_specs import bind_host
from allocation_ledger.adapters.provisioning.processes import ServerProcesses
from allocation_ledger.adapters.provisioning.server_spec import ServerSpec
from allocation_ledger.adapters.provisioning.worker_provisioning import (
    WorkerProvisioning,
)
from allocation_ledger.adapters.provisioning.worker_reports import WorkerEvent
from allocation_ledger.domain.errors import LedgerError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.server_process import ProcessReport
from allocation_ledger.domain.values import AllocationState


def reconcile_servers(
    ledger: Ledger,
    processes: ServerProcesses,
    specs: Mapping[str, ServerSpec],
    *,
    advertise_host: Callable[[str], str],
    record: Callable[[ProcessReport], None],
) -> list[str]:
    """Make this machine's MCP server processes what the pools record.

    `specs`: the catalog's servers by name; `advertise_host(pool)`: the host
    the pool's endpoints carry (the servers bind accordingly); `record`:
    records a ProcessReport in the ledger (a `failed` one for a server not
    in the catalog any more). Lines for the log.
    """
    recorded = ledger.recorded_servers()
    expected = {key: server.port for key, server in recorded.items() if key[1] in specs}
    hosts = {pool: bind_host(advertise_host(pool)) for pool, _ in recorded}
    processes.reconcile(expected, hosts=hosts)
    lines: list[str] = []
    for (pool, name), server in sorted(recorded.items()):
        info = processes.info(pool, name)
        if info is not None and info.pid is not None and info.status == "running":
            lines.append(
                f"MCP server {name} of pool {pool}: pid {info.pid} on port "
                f"{server.port} ({info.status})"
            )
            continue
        if name not in specs:
            reason = f'"{name}" is not in the catalog any more'
            record(
                ProcessReport(
                    "failed", pool, name, server.port, None, {"reason": reason}
                )
            )
        else:
            reason = "its start failed"
        if ledger.stop_unstartable_server(pool, name, server.port):
            lines.append(
                f"MCP server {name} of pool {pool}: {reason}; recorded "
                f"stopped, port {server.port} free"
            )
        else:
            lines.append(
                f"MCP server {name} of pool {pool}: {reason}; still in use "
                f"by {server.references} allocation(s)"
            )
    return lines


def reconcile_workers(ledger: Ledger, workers: WorkerProvisioning) -> list[str]:
    """Adopt the workers of live allocations an earlier run left running;
    stop those no live allocation holds; record the ones gone (and start
    them again, see `start_again`). Lines for the log."""
    expected = ledger.live_worker_ids()
    lines: list[str] = []
    for event in workers.supervisor.reconcile(expected):
        what = {
            "adopted": "adopted",
            "exited": f"gone (cause {event.detail.get('cause', 'unknown')})",
            "stopped": f"stopped ({event.detail.get('reason', 'requested')})",
        }.get(event.kind, event.kind)
        lines.append(
            f"worker {event.worker_id} of allocation {event.allocation_id} "
            f"(pool {event.pool}): pid {event.pid} {what}"
        )
        if event.kind == "exited" and event.detail.get("cause") == "unknown":
            lines.append(start_again(ledger, workers, event))
    return lines


def start_again(ledger: Ledger, workers: WorkerProvisioning, gone: WorkerEvent) -> str:
    """Start again a worker of an active allocation whose process was gone
    at reconciliation (it ended while no ledger watched: the ledger still
    holds it running). A worker the kernel killed for its memory, or of an
    allocation not active (a pending one is provisioned again), is left as
    it is. A line for the log."""
    where = f"worker {gone.worker_id} of allocation {gone.allocation_id}"
    try:
        allocation = ledger.allocation(gone.allocation_id)
    except LedgerError as error:
        return f"{where}: not started again ({error})"
    slots = [w for w in allocation.workers if w.worker_id == gone.worker_id]
    if allocation.state is not AllocationState.ACTIVE or not slots:
        return f"{where}: not started again (allocation {allocation.state})"
    try:
        workers.start(
            gone.allocation_id,
            slots,
            allocation.endpoints.servers,
            pool=allocation.pool,
        )
    except Exception as error:  # noqa: BLE001 - reported, the allocation stays
        return f"{where}: could not be started again: {error}"
    info = workers.info(gone.worker_id)
    pid = None if info is None else info.pid
    return f"{where} (pool {allocation.pool}): started again, pid {pid}"
