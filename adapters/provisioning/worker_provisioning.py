"""The workers of allocations as processes, for the process provisioner.

`WorkerProvisioning` is the part of `ProcessProvisioner` that runs workers
where a pool has a `worker_command`: it fills in each worker's argv from the
catalog, starts the workers of an allocation through `WorkerProcesses`
(workers.py) on the ports the pool assigned (claimed through
`WorkerPortClaims`, worker_ports.py, so that no port is started on while an
old worker still holds it), limited to the pool's recorded worker size, and
waits until every one of them is ready (the pool's `worker_ready`: it
listens on its port, or keeps running for `worker_settle_seconds`; within
`worker_start_timeout_seconds`), and stops them (SIGTERM, the grace period,
SIGKILL; all at once). A worker that exits first, or is not ready in time,
fails the start: the allocation's other workers are stopped and the error
(naming the worker, quoting its log) is raised, for the ledger to fail the
allocation with `provisioning_failed`. See docs/provisioning.md, "The life
of a worker".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Literal

from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.provisioning.worker_ports import WorkerPortClaims
from allocation_ledger.adapters.provisioning.worker_reports import (
    WorkerEvent,
    WorkerInfo,
    WorkerStartError,
)
from allocation_ledger.adapters.provisioning.workers import WorkerProcesses
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.provisioner import WorkerSlot
from allocation_ledger.domain.values import Resources


class WorkerProvisioning:
    """Starts and stops the workers of allocations (pools with a `worker_command`).

    - `catalog`: which pools have a `worker_command` (and what it is).
    - `data_dir`: the supervisor's logs and state files (see WorkerProcesses).
    - `ledger`: gives the connected ledger (its pools say who holds which
      port and how big a worker is); raises RuntimeError before connect.
    - `record`: told of every WorkerEvent, to record it in the ledger.
    - `now`, `watch_interval_seconds`, `enforce`: as WorkerProcesses takes them.
    - `grace_seconds`: how long a stopped worker has between SIGTERM and SIGKILL.

    Every method blocks (a stop waits out its grace period); call them from
    worker threads.
    """

    def __init__(
        self,
        catalog: Catalog,
        data_dir: Path,
        ledger: Callable[[], Ledger],
        record: Callable[[WorkerEvent], None],
        *,
        now: Callable[[], datetime],
        watch_interval_seconds: float,
        grace_seconds: float,
        enforce: Literal["auto", "rlimit"],
    ) -> None:
        self.catalog = catalog
        self._ledger = ledger
        self.grace_seconds = grace_seconds
        self.supervisor = WorkerProcesses(
            data_dir,
            record,
            enforce=enforce,
            now=now,
            watch_interval_seconds=watch_interval_seconds,
        )
        self.claims = WorkerPortClaims(
            self.supervisor, ledger, grace_seconds=grace_seconds
        )

    def runs_workers(self, pool: str) -> bool:
        """Whether the workers of `pool` are processes (it has a worker_command)."""
        entry = self.catalog.pools.get(pool)
        return entry is not None and bool(entry.worker_command)

    def start(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        endpoints: Mapping[str, str],
        *,
        pool: str,
    ) -> None:
        """Start each worker (the pool has a worker_command) with the
        servers' `endpoints` in its environment, then wait until all are
        ready (the pool's readiness check, within its
        `worker_start_timeout_seconds`; see WorkerProcesses.wait_ready).

        On a failure (a worker cannot start, exits before it is ready, is
        stopped meanwhile by a release, or is not ready in time) the
        workers started for the allocation are stopped and the
        WorkerStartError (naming the worker, quoting its log) is raised. A
        worker whose allocation no longer holds its port is not started
        (its teardown follows)."""
        entry = self.catalog.pools[pool]
        size = self._worker_size(pool)
        check = entry.worker_readiness
        started: list[str] = []
        try:
            for slot in workers:
                argv = entry.worker_argv(
                    port=slot.port,
                    worker_id=slot.worker_id,
                    allocation_id=allocation_id,
                )
                with self.claims.claim(
                    pool=pool,
                    allocation_id=allocation_id,
                    worker_id=slot.worker_id,
                    port=slot.port,
                ) as ours:
                    if not ours:  # the allocation ended: its teardown follows
                        continue
                    self.supervisor.start(
                        pool=pool,
                        allocation_id=allocation_id,
                        worker_id=slot.worker_id,
                        port=slot.port,
                        argv=argv,
                        cpu_millicores=size.cpu_millicores,
                        memory_mib=size.memory_mib,
                        mcp_endpoints=endpoints,
                        port_must_be_free=check == "port",
                    )
                started.append(slot.worker_id)
            self.supervisor.wait_ready(
                started,
                check=check,
                timeout_seconds=entry.worker_start_timeout_seconds,
                settle_seconds=entry.worker_settle_seconds,
            )
        except Exception as error:
            self.stop(started, reason=_failed_start(error))
            raise

    def stop(self, worker_ids: Sequence[str], *, reason: str = "requested") -> None:
        """Stop the workers, all at once (each waits out its own grace);
        `reason` goes into their `stopped` events."""
        if not worker_ids:
            return
        supervisor, grace = self.supervisor, self.grace_seconds
        if len(worker_ids) == 1:
            supervisor.stop(worker_ids[0], grace, reason)
            return
        with ThreadPoolExecutor(max_workers=min(16, len(worker_ids))) as threads:
            stops = [
                threads.submit(supervisor.stop, w, grace, reason) for w in worker_ids
            ]
            for done in stops:
                done.result()

    def info(self, worker_id: str) -> WorkerInfo | None:
        """What the supervisor knows of the worker; None if nothing."""
        return self.supervisor.info(worker_id)

    def enforcement(self) -> dict[str, str]:
        """How workers are limited here (see WorkerProcesses.enforcement)."""
        return self.supervisor.enforcement()

    def close(self, *, stop_all: bool = False) -> None:
        """Stop watching; with `stop_all`, stop every worker too."""
        self.supervisor.close(stop_all=stop_all)

    def _worker_size(self, pool: str) -> Resources:
        """What one worker of `pool` holds (the pool's recorded worker size)."""
        return self._ledger().pool(pool).settings.worker_size


def _failed_start(error: Exception) -> str:
    """The `reason` of the stops after a failed start, in one line, e.g.
    `its allocation's start failed: worker 'alloc-…-worker-1' exited before
    it was ready (exit code 1)`."""
    if isinstance(error, WorkerStartError):
        reason = error.reason
        what = reason[3:] if reason.startswith("it ") else f"did not start: {reason}"
        return f"its allocation's start failed: worker {error.worker_id!r} {what}"
    first = (str(error) or type(error).__name__).splitlines()[0]
    return f"its allocation's start failed: {first}"
