"""The process provisioner: the MCP servers and workers an allocation holds
run for real.

`ProcessProvisioner` implements the ledger's Provisioner port on
`ServerProcesses` (processes.py) and `WorkerProcesses` (workers.py):
`provision` makes sure each of the allocation's servers runs on the port its
pool assigned and answers MCP, then, when the pool has a `worker_command`,
starts each of its workers as a process limited to the pool's worker size,
given the servers' endpoints, and waits until each is ready (it listens on
its port, or keeps running for a settle time); it hands out
`http://<advertise_host>:<port>` addresses. `deprovision` stops the
allocation's workers (SIGTERM, grace, SIGKILL); `stop_server` stops a
server's process once its pool no longer records it. Everything the
processes go through is recorded in the ledger: ServerProcess events for
servers, WorkerProcess events for workers (a worker's exit after it was
ready never changes its allocation's state). `reconcile` makes the processes
on this machine what the ledger records, at start (reconciliation.py). The
workers' part is worker_provisioning.py; what is recorded in the ledger,
recorder.py.

It is not instant: the ledger calls `provision` between two units of work
(the allocation `pending` meanwhile), never inside one, so it may block and
may record events itself. Only a warm request (every server it names already
runs here, and its pool starts no workers) is activated in the unit of work
that reserves it: `instant_endpoints` then answers its endpoints from the
supervisor's state, without blocking. A pool without a `worker_command`
keeps its workers as addresses (reserved slots). See docs/provisioning.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.config.entries import DEFAULT_ADVERTISE_HOST
from allocation_ledger.adapters.provisioning.catalog_specs import (
    bind_host,
    server_spec,
    unknown_servers_message,
)
from allocation_ledger.adapters.provisioning.data_directory import lock_data_directory
from allocation_ledger.adapters.provisioning.local import url_host
from allocation_ledger.adapters.provisioning.process_reports import ProcessInfo
from allocation_ledger.adapters.provisioning.processes import ServerProcesses
from allocation_ledger.adapters.provisioning.reconciliation import (
    reconcile_servers,
    reconcile_workers,
)
from allocation_ledger.adapters.provisioning.recorder import LedgerRecorder
from allocation_ledger.adapters.provisioning.server_spec import (
    RestartPolicy,
    ServerSpec,
)
from allocation_ledger.adapters.provisioning.supervision import Key
from allocation_ledger.adapters.provisioning.supervisor import utc_now
from allocation_ledger.adapters.provisioning.worker_provisioning import (
    WorkerProvisioning,
)
from allocation_ledger.adapters.provisioning.worker_reports import WorkerInfo
from allocation_ledger.adapters.provisioning.workers import WorkerProcesses
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot

logger = logging.getLogger(__name__)


def worker_endpoints(host: str, workers: Sequence[WorkerSlot]) -> dict[str, str]:
    """`{worker_id: "http://<host>:<port>"}` for the workers' slots."""
    return {w.worker_id: f"http://{url_host(host)}:{w.port}" for w in workers}


class ProcessProvisioner:
    """Runs the catalog's MCP servers as processes on this machine.

    - `catalog`: the servers (how to run each) and pools (`advertise_host`).
    - `data_dir`: logs in `<data_dir>/logs/`, state files in `<data_dir>/run/`
      (what lets the next run adopt the processes this one leaves running).
    - `now`: the clock of the supervisor's own event times (the ledger
      records every event at its own clock's time).
    - `restart_policy`, `watch_interval_seconds`, `health_timeout_seconds`:
      as ServerProcesses takes them.
    - `worker_grace_seconds`: how long a stopped worker has between SIGTERM
      and SIGKILL; `worker_enforce`: "auto" (cgroups where the machine
      offers them, else RLIMIT_AS) or "rlimit" (see WorkerProcesses).

    The worker supervisor runs only when a pool of the catalog has a
    `worker_command` (`workers` is None otherwise).

    Call `connect(ledger)` before use: events are recorded in that ledger,
    and a stop asks it whether the server was recorded again meanwhile.
    Every method but `instant_endpoints` may block; call them from worker
    threads.

    One provisioner at a time runs the servers of a data directory: it holds
    an exclusive lock on `<data_dir>/ledger.lock` until `close()` (the
    kernel drops it if the process dies). Raises DataDirectoryBusyError when
    another process holds it.
    """

    instant = False

    def __init__(
        self,
        catalog: Catalog,
        data_dir: Path,
        *,
        now: Callable[[], datetime] = utc_now,
        restart_policy: RestartPolicy | None = None,
        watch_interval_seconds: float = 0.2,
        health_timeout_seconds: float = 5.0,
        worker_grace_seconds: float = 5.0,
        worker_enforce: Literal["auto", "rlimit"] = "auto",
    ) -> None:
        self.catalog = catalog
        self.specs = {
            name: server_spec(name, entry)
            for name, entry in catalog.mcp_servers.items()
        }
        self.data_dir = Path(data_dir)
        self._lock_file = lock_data_directory(self.data_dir)
        self.recorder = LedgerRecorder()
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}
        self.processes = ServerProcesses(
            self.data_dir,
            self.recorder.server_event,
            catalog=self.specs,
            restart_policy=restart_policy,
            now=now,
            watch_interval_seconds=watch_interval_seconds,
            health_timeout_seconds=health_timeout_seconds,
        )
        self.worker_grace_seconds = worker_grace_seconds
        self.worker_provisioning: WorkerProvisioning | None = None
        self.workers: WorkerProcesses | None = None
        if any(entry.worker_command for entry in catalog.pools.values()):
            self.worker_provisioning = WorkerProvisioning(
                catalog,
                self.data_dir,
                self.recorder.require,
                self.recorder.worker_event,
                now=now,
                watch_interval_seconds=watch_interval_seconds,
                grace_seconds=worker_grace_seconds,
                enforce=worker_enforce,
            )
            self.workers = self.worker_provisioning.supervisor

    def connect(self, ledger: Ledger) -> None:
        """Record every process event in `ledger`, and consult it before a stop."""
        self.recorder.connect(ledger)

    # -- the Provisioner port ----------------------------------------------

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints:
        """Make sure each server runs on its port and answers MCP; the endpoints.

        A server already running there is shared (same process); one that
        runs on another port than the pool assigned is moved there; another
        server of the pool still holding the port is stopped first. Blocks
        until every server answers (at most each one's start timeout).
        Raises ServerStartError (its message names the server and quotes the
        last lines of its log) or ValueError for a server not in the catalog;
        servers started before the failure are left to the pool (idle ones
        are stopped by the ledger).

        Then, when the pool has a `worker_command`, each worker is started
        (or found running, on a second call) with the servers' endpoints in
        `LEDGER_MCP_ENDPOINTS`, limited to the pool's worker size, and
        waited for until it is ready (WorkerProvisioning.start). A worker
        that cannot start, exits before it is ready or is not ready within
        the pool's `worker_start_timeout_seconds` raises WorkerStartError
        (naming it, quoting its log) after the workers started for the
        allocation are stopped.
        """
        host = self.advertise_host(pool)
        endpoints: dict[str, str] = {}
        for slot in servers:
            spec = self.specs.get(slot.name)
            if spec is None:
                raise ValueError(unknown_servers_message([slot.name], list(self.specs)))
            with self._lock(pool, slot.name):
                self._free_port(pool, slot)
                self._ensure_running(pool, spec, slot.port, bind_host(host))
            endpoints[slot.name] = spec.endpoint(host, slot.port)
        if workers and self.worker_provisioning is not None and self.runs_workers(pool):
            self.worker_provisioning.start(allocation_id, workers, endpoints, pool=pool)
        return Endpoints(workers=worker_endpoints(host, workers), servers=endpoints)

    def instant_endpoints(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints | None:
        """The endpoints, with nothing done, when the allocation's servers
        are all warm here and its pool runs no workers; else None.

        Warm: the pool recorded the server before this request (its slot
        was not `started` by it), and this machine's supervisor has it
        `running` (it answered MCP when it was started or adopted) with a
        pid, on the slot's port, with no start or stop of it under way here.
        A pool with a `worker_command` always answers None (its workers are
        processes `provision` starts).

        The ledger calls it inside the unit of work that reserves, holding
        its lock, so it never blocks: a server whose lock a start or stop
        holds is not warm (the slow path waits for it). A `stop_server`
        that takes the lock after this answer reads the pool only once that
        unit of work is over (`Ledger.pool` waits for the ledger's lock), so
        it sees the server in use and leaves it running.
        """
        if self.runs_workers(pool):
            return None
        host = self.advertise_host(pool)
        endpoints: dict[str, str] = {}
        for slot in servers:
            spec = self.specs.get(slot.name)
            if spec is None or slot.started or not self._runs_warm(pool, slot):
                return None
            endpoints[slot.name] = spec.endpoint(host, slot.port)
        return Endpoints(workers=worker_endpoints(host, workers), servers=endpoints)

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> None:
        """Stop the allocation's workers, when its pool runs them as
        processes (SIGTERM to each one's group, the grace period, SIGKILL;
        all at once). Its MCP servers are shared, and stopped by the ledger
        once idle (`stop_server`)."""
        if workers and self.worker_provisioning is not None:
            self.worker_provisioning.stop([slot.worker_id for slot in workers])

    def stop_server(self, name: str, port: int, *, pool: str) -> None:
        """Stop the process of `name` in `pool`, which served on `port`.

        Skipped when the pool has meanwhile recorded the server again on the
        same port (a new allocation started it again), or when the process
        now serves on another port (a newer start). Waits until the process
        group is gone and the port is free.
        """
        with self._lock(pool, name):
            if self.recorder.recorded_port(pool, name) == port:
                return
            info = self.processes.info(pool, name)
            if info is not None and info.port != port and info.pid is not None:
                return
            self.processes.stop(pool, name)

    # -- start-up and status -------------------------------------------------

    def reconcile(self) -> list[str]:
        """Make this machine's processes what the ledger records; lines for the log.

        Every server the pools record as running or idle gets one live
        process (adopted from an earlier run of this data directory, or
        started); every other process of an earlier run is stopped. A server
        that cannot be started (not in the catalog any more, or its start
        fails) and that no live allocation uses is recorded stopped in its
        pool, its port free; one in use stays recorded, with its failure in
        its history. Workers: adopted, stopped when no live allocation holds
        them, and started again when gone while their allocation is active
        (`reconciliation.start_again`). Raises RuntimeError before connect().
        """
        ledger = self.recorder.require()
        lines = reconcile_servers(
            ledger,
            self.processes,
            self.specs,
            advertise_host=self.advertise_host,
            record=self.recorder.report,
        )
        if self.worker_provisioning is not None:
            lines += reconcile_workers(ledger, self.worker_provisioning)
        return lines

    def runs_workers(self, pool: str) -> bool:
        """Whether the workers of `pool` are processes (it has a worker_command)."""
        workers = self.worker_provisioning
        return workers is not None and workers.runs_workers(pool)

    def worker_info(self, worker_id: str) -> WorkerInfo | None:
        """What this machine's worker supervisor knows of the worker; None if
        nothing (not a process here, or forgotten an hour after it ended)."""
        workers = self.worker_provisioning
        return None if workers is None else workers.info(worker_id)

    def worker_enforcement(self) -> dict[str, str] | None:
        """How workers are limited here (`{"memory": ..., "cpu": ...}`, and a
        `note` when a dimension fell back); None when no pool runs workers."""
        workers = self.worker_provisioning
        return None if workers is None else workers.enforcement()

    def advertise_host(self, pool: str) -> str:
        """The host name the endpoints of `pool` carry (catalog, else localhost)."""
        entry = self.catalog.pools.get(pool)
        return entry.advertise_host if entry is not None else DEFAULT_ADVERTISE_HOST

    def server_info(self, pool: str, name: str) -> ProcessInfo | None:
        """What this machine's supervisor knows of the server; None if nothing."""
        return self.processes.info(pool, name)

    def close(self, *, stop_all: bool = False) -> None:
        """Stop watching; with `stop_all`, stop every server process too.

        Without, the processes (servers and workers) keep running and the
        next run on the same data directory adopts them (reconcile).
        """
        self.processes.close(stop_all=stop_all)
        if self.worker_provisioning is not None:
            self.worker_provisioning.close(stop_all=stop_all)
        if not self._lock_file.closed:
            self._lock_file.close()  # releases the lock

    # -- internals -------------------------------------------------------------

    def _ensure_running(
        self, pool: str, spec: ServerSpec, port: int, host: str
    ) -> ProcessInfo:
        try:
            return self.processes.ensure_running(pool, spec, port, host)
        except ValueError:
            # It runs on another port than the pool now assigns: the pool's
            # record counts, so it is moved.
            self.processes.stop(pool, spec.name)
            return self.processes.ensure_running(pool, spec, port, host)

    def _runs_warm(self, pool: str, slot: ServerSlot) -> bool:
        """Whether the server runs here on the slot's port, answering, with
        no start or stop of it under way (never waits for its lock)."""
        lock = self._lock(pool, slot.name)
        if not lock.acquire(blocking=False):
            return False
        try:
            info = self.processes.info(pool, slot.name)
        finally:
            lock.release()
        return (
            info is not None
            and info.status == "running"
            and info.pid is not None
            and info.port == slot.port
        )

    def _free_port(self, pool: str, slot: ServerSlot) -> None:
        """Stop another server of the pool whose process still holds the
        slot's port: the pool gave the port to this server, so it no longer
        records the other one there."""
        for info in self.processes.status():
            holds = info.pid is not None or info.status == "starting"
            if (
                info.pool == pool
                and info.name != slot.name
                and info.port == slot.port
                and holds
            ):
                logger.warning(
                    "stopping MCP server %s of pool %s: port %d now belongs to %s",
                    info.name,
                    pool,
                    slot.port,
                    slot.name,
                )
                self.processes.stop(pool, info.name)

    def _lock(self, pool: str, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((pool, name), threading.Lock())
