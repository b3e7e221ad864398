"""The supervisor of the worker processes on this machine.

`WorkerProcesses` starts each worker of an allocation as a process group of
its own, inside limits on its CPU and memory that the operating system
enforces (`limits.py`: cgroup v2, cgroup v1, or RLIMIT_AS with no CPU
limit), notices when it ends by itself or is killed for passing its memory,
stops it on request (SIGTERM to its group, a grace period, SIGKILL), and
leaves a state file per worker so that the next run on the same data
directory adopts it or stops it. Workers are never restarted: a worker that
died is a fact for its allocation's agent to see. Every start, exit, stop and
adoption is told to `on_event`, never while an internal lock is held.

All methods block (a stop waits out its grace period) and may be called from
any thread that runs no event loop; from async code, use a worker thread.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping, Sequence

from allocation_ledger.adapters.provisioning.supervised import WorkerStart
from allocation_ledger.adapters.provisioning.worker_reports import (
    WorkerEvent,
    WorkerInfo,
    WorkerStartError,
)
from allocation_ledger.adapters.provisioning.worker_supervision import (
    DEFAULT_GRACE_SECONDS,
    WorkerSupervision,
)

ENV_ALLOCATION_ID = "LEDGER_ALLOCATION_ID"
ENV_WORKER_ID = "LEDGER_WORKER_ID"
ENV_MCP_ENDPOINTS = "LEDGER_MCP_ENDPOINTS"
ENV_POOL = "LEDGER_POOL"
ENV_WORKER_PORT = "LEDGER_WORKER_PORT"


class WorkerProcesses(WorkerSupervision):
    """Runs the workers of allocations as limited processes, one per worker id.

    - `data_dir`: logs go to `<data_dir>/logs/worker-<worker_id>.log`, state
      files to `<data_dir>/run/workers/<worker_id>.json`.
    - `on_event(WorkerEvent)`: told of every start, exit, stop and adoption,
      from the thread that caused it (exits: the watcher thread); an
      exception it raises is logged and ignored.
    - `enforce`: "auto" uses the best the machine offers (see `enforcement()`),
      "rlimit" forces RLIMIT_AS and no CPU limit.
    - `cgroup_v2_parent`: a delegated cgroup v2 directory to make worker
      groups under, instead of this process's own group.
    - `environ`: what every worker's environment starts from (default: this
      process's environment, as for the MCP servers).
    - `now`: the clock of event times.
    - `watch_interval_seconds`: how often the watcher looks at the workers.
    - `keep_ended_seconds`: how long an ended worker stays in `status()` and
      `info()` (default an hour; its events are the lasting record).
    """

    # -- commands ------------------------------------------------------------

    def start(
        self,
        *,
        pool: str,
        allocation_id: str,
        worker_id: str,
        port: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cpu_millicores: int = 0,
        memory_mib: int = 0,
        mcp_endpoints: Mapping[str, str] | None = None,
    ) -> WorkerInfo:
        """Start the worker, or return it when it already runs.

        `argv` is final: the caller has filled in the placeholders (the
        catalog's `PoolEntry.worker_argv`); it is never formatted again, so a
        literal brace stays one. The environment is `environ`, then `env`,
        then `LEDGER_ALLOCATION_ID`, `LEDGER_WORKER_ID`, `LEDGER_POOL`,
        `LEDGER_WORKER_PORT` and `LEDGER_MCP_ENDPOINTS` (JSON: server name to
        endpoint). Returns once the worker's own program runs (no readiness
        check). A worker of this id that runs (here, or left by an earlier
        run with the same argv) is returned as it is; one that ended is
        started again. Raises WorkerStartError when it cannot start (nothing
        is left running), ValueError when the id runs with other facts,
        RuntimeError after close() or inside a running event loop.
        """
        self._check_open()
        argv = tuple(argv)
        if not argv:
            raise ValueError(f"worker {worker_id!r} has an empty command")
        with self._telling() as events, self._keys.hold(worker_id):
            asked = WorkerStart(pool, allocation_id, worker_id, port, argv)
            running = self._find(worker_id, events, announce=True)
            if running is not None:
                if running.matches(asked):
                    with self._lock:
                        return running.info()
                if running.process is not None:
                    raise ValueError(
                        f"worker {worker_id!r} already runs for allocation "
                        f"{running.allocation_id!r} on port {running.port} "
                        f"with {shlex.join(running.argv)}"
                    )
                reason = "started again with other facts"
                self._stop_locked(running, DEFAULT_GRACE_SECONDS, events, reason)
            environment = self._environ | dict(env or {})
            environment |= {
                ENV_ALLOCATION_ID: allocation_id,
                ENV_WORKER_ID: worker_id,
                ENV_POOL: pool,
                ENV_WORKER_PORT: str(port),
                ENV_MCP_ENDPOINTS: json.dumps(
                    dict(mcp_endpoints or {}), sort_keys=True
                ),
            }
            limits = self._prepare(worker_id, cpu_millicores, memory_mib)
            worker = self._spawn(asked, environment, limits, events)
            with self._lock:
                return worker.info()

    def stop(
        self, worker_id: str, grace_seconds: float = DEFAULT_GRACE_SECONDS
    ) -> WorkerInfo | None:
        """Stop the worker: SIGTERM to its process group, SIGKILL after
        grace_seconds, then whatever is left in its cgroups; its cgroups go.

        Also stops the worker an earlier run recorded under this id, when its
        process is still the recorded one. A worker that had already ended is
        reported as `exited` (its cause kept), not stopped. Its final info;
        None when no worker of this id is known here or recorded.
        """
        self._check_open(loop_only=True)
        with self._telling() as events, self._keys.hold(worker_id):
            worker = self._find(worker_id, events, announce=False)
            if worker is not None:
                self._stop_locked(worker, grace_seconds, events, "requested")
            with self._lock:
                known = self._workers.get(worker_id)
                return None if known is None else known.info()

    def reconcile(self, expected_worker_ids: Iterable[str]) -> list[WorkerEvent]:
        """Make the running workers exactly those expected that still live.

        Each worker an earlier run recorded is adopted when expected and its
        pid is still the recorded process (`adopted`), reported `exited` when
        expected but gone, stopped when not expected (`stopped`, reason "not
        expected"), and its record dropped when neither expected nor alive.
        Workers of this supervisor that are not expected are stopped. An
        expected id with no process afterwards (see `status()`) has none to
        find: nothing here knows of it. Returns the events (also given to
        on_event).
        """
        self._check_open(loop_only=True)
        expected = set(expected_worker_ids)
        done: list[WorkerEvent] = []
        with self._telling() as events:
            for path, record in self.records:
                if record is None:
                    self.records.remove_file(path)
                    continue
                with self._keys.hold(record.worker_id):
                    wanted = record.worker_id in expected
                    self._find(record.worker_id, events, announce=wanted)
                done += self._emit(events)
            for worker_id in self._running_ids():
                with self._keys.hold(worker_id):
                    worker = self._running(worker_id, events)
                    if worker is not None and worker_id not in expected:
                        self._stop_locked(worker, 5.0, events, "not expected")
                done += self._emit(events)
        return done

    def close(self, stop_all: bool = False) -> None:
        """Stop watching; with stop_all, stop every running worker too.

        Without stop_all the workers keep running, and their state files let
        the next run on this data directory adopt them. Parent cgroups left
        empty are removed.
        """
        super().close()
        for worker_id in self._running_ids() if stop_all else []:
            with self._telling() as events, self._keys.hold(worker_id):
                worker = self._running(worker_id, events)
                if worker is not None:
                    self._stop_locked(worker, 5.0, events, "supervisor closed")
        self._limiter.close()


__all__ = [
    "ENV_ALLOCATION_ID",
    "ENV_MCP_ENDPOINTS",
    "ENV_POOL",
    "ENV_WORKER_ID",
    "ENV_WORKER_PORT",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerProcesses",
    "WorkerStartError",
]
