"""The supervisor of the worker processes on this machine.

`WorkerProcesses` starts each worker of an allocation as a process group of
its own, inside limits on its CPU and memory that the operating system
enforces (`limits.py`: cgroup v2, cgroup v1, or RLIMIT_AS with no CPU
limit), notices when it ends by itself or is killed for passing its memory,
stops it on request (SIGTERM to its group, a grace period, SIGKILL), and
leaves a state file per worker so that the next run on the same data
directory adopts it or stops it. `wait_ready` waits until started workers
are ready (they listen on their port, or keep running for a settle time),
noticing at once one that exits first. Workers are never restarted: a
worker that died is a fact for its allocation's agent to see. Every start,
readiness, exit, stop and adoption is told to `on_event`, never while an
internal lock is held.

All methods block (a stop waits out its grace period) and may be called from
any thread that runs no event loop; from async code, use a worker thread.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.launch import port_taken
from allocation_ledger.adapters.provisioning.supervised import WorkerStart
from allocation_ledger.adapters.provisioning.worker_reports import (
    WorkerEvent,
    WorkerInfo,
    WorkerStartError,
    last_run_lines,
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
READY_HOSTS = ("127.0.0.1", "::1")
"""Where a worker checked by `port` is connected to (it listens on either)."""
READY_PROBE_SECONDS = 0.5
READY_RETRY_SECONDS = 0.05


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
        port_must_be_free: bool = False,
    ) -> WorkerInfo:
        """Start the worker, or return it when it already runs.

        `argv` is final: the caller has filled in the placeholders (the
        catalog's `PoolEntry.worker_argv`); it is never formatted again, so a
        literal brace stays one. The environment is `environ`, then `env`,
        then `LEDGER_ALLOCATION_ID`, `LEDGER_WORKER_ID`, `LEDGER_POOL`,
        `LEDGER_WORKER_PORT` and `LEDGER_MCP_ENDPOINTS` (JSON: server name to
        endpoint). Returns once the worker's own program runs (`wait_ready`
        then waits until it is ready). A worker of this id that runs (here,
        or left by an earlier run with the same argv) is returned as it is;
        one that ended is started again. With `port_must_be_free`, a worker
        to spawn is not when something already listens on 127.0.0.1:port
        (its readiness by `port` would be a false one).

        Raises WorkerStartError when it cannot start (nothing is left
        running; a program that does not exist says `command not found`),
        ValueError when the id runs with other facts, RuntimeError after
        close() or inside a running event loop.
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
            if port_must_be_free and not control.port_is_free(READY_HOSTS[0], port):
                reason = port_taken(port, READY_HOSTS[0], pool, "worker_ports")
                raise WorkerStartError(worker_id, reason)
            limits = self._prepare(worker_id, cpu_millicores, memory_mib)
            worker = self._spawn(asked, environment, limits, events)
            with self._lock:
                return worker.info()

    def wait_ready(
        self,
        worker_ids: Sequence[str],
        *,
        check: Literal["port", "running"],
        timeout_seconds: float,
        settle_seconds: float = 1.0,
    ) -> list[WorkerInfo]:
        """Wait until each started worker is ready; their infos, in order.

        Ready, by `check`: `port`, a TCP connection to the worker's port
        (on 127.0.0.1 or ::1) succeeds; `running`, it still runs
        `settle_seconds` after this call began. Each is told `ready` (detail:
        check, seconds, and port). All are waited for at once, up to
        `timeout_seconds` in all. A worker that exits meanwhile is noticed
        within a fraction of a second (told `exited` as usual).

        Raises WorkerStartError naming the first worker that is not ready:
        it exited first (its exit, and the last lines of its log), it was
        stopped meanwhile (a release during its start), it is not known
        here, or it was not ready within `timeout_seconds` (then it is left
        running: the caller stops it), or the supervisor was closed
        meanwhile. Blocks; never holds a worker's lock for long, so a stop
        during the wait goes ahead at once.
        """
        self._check_open(loop_only=True)
        began = time.monotonic()
        waiting = list(dict.fromkeys(worker_ids))
        ready: dict[str, WorkerInfo] = {}
        while waiting:
            for worker_id in list(waiting):
                info = self._look_at(worker_id)
                if info is None or info.status != "running":
                    raise self._not_ready(worker_id, check, timeout_seconds)
                seconds = time.monotonic() - began
                if self._is_ready(info, check, seconds, settle_seconds):
                    ready[worker_id] = info
                    waiting.remove(worker_id)
                    self._tell_ready(info, check, seconds)
            if not waiting:
                break
            if self._closing.is_set():
                raise WorkerStartError(waiting[0], "the worker supervisor was closed")
            left = began + timeout_seconds - time.monotonic()
            if left <= 0:
                raise self._not_ready(waiting[0], check, timeout_seconds)
            time.sleep(min(READY_RETRY_SECONDS, left))
        return [ready[worker_id] for worker_id in dict.fromkeys(worker_ids)]

    def stop(
        self,
        worker_id: str,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        reason: str = "requested",
    ) -> WorkerInfo | None:
        """Stop the worker: SIGTERM to its process group, SIGKILL after
        grace_seconds, then whatever is left in its cgroups; its cgroups go.

        Also stops the worker an earlier run recorded under this id, when its
        process is still the recorded one. A worker that had already ended is
        reported as `exited` (its cause kept), not stopped. `reason` goes
        into its `stopped` event. Its final info; None when no worker of this
        id is known here or recorded.
        """
        self._check_open(loop_only=True)
        with self._telling() as events, self._keys.hold(worker_id):
            worker = self._find(worker_id, events, announce=False)
            if worker is not None:
                self._stop_locked(worker, grace_seconds, events, reason)
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

    # -- readiness ---------------------------------------------------------

    def _look_at(self, worker_id: str) -> WorkerInfo | None:
        """The worker's info, an exit noted first when its lock is free
        (when not, a stop or the watcher holds it and sees to it)."""
        with self._telling() as events, self._keys.hold(worker_id, wait=False) as held:
            if held:
                self._running(worker_id, events)
        return self.info(worker_id)

    @staticmethod
    def _is_ready(
        info: WorkerInfo,
        check: Literal["port", "running"],
        seconds: float,
        settle_seconds: float,
    ) -> bool:
        """Whether a running worker passes its check now."""
        if check == "running":
            return seconds >= settle_seconds
        return any(
            control.accepts_connections(host, info.port, READY_PROBE_SECONDS)
            for host in READY_HOSTS
        )

    def _tell_ready(
        self, info: WorkerInfo, check: Literal["port", "running"], seconds: float
    ) -> None:
        detail: dict[str, object] = {"check": check, "seconds": round(seconds, 3)}
        if check == "port":
            detail["port"] = info.port
        event = WorkerEvent(
            "ready",
            info.pool,
            info.allocation_id,
            info.worker_id,
            info.pid,
            self._now(),
            detail,
        )
        self._emit([event])

    def _not_ready(
        self, worker_id: str, check: Literal["port", "running"], timeout: float
    ) -> WorkerStartError:
        """The error for a worker found not ready (or at the timeout)."""
        info = self.info(worker_id)
        if info is None:
            return WorkerStartError(worker_id, "it is not known to the supervisor")
        tail = last_run_lines(info.log_path)
        if info.status == "exited":
            ended = "exit status unknown" if info.exit is None else info.exit.describe()
            if info.cause == "memory_limit":
                ended += ", past its memory limit"
            return WorkerStartError(
                worker_id, f"it exited before it was ready ({ended})", tail
            )
        if info.status == "stopped":
            return WorkerStartError(worker_id, "it was stopped before it was ready")
        if check == "port":
            reason = f"it did not listen on its port {info.port} within {timeout:g} s"
        else:
            reason = f"it was not ready within {timeout:g} s"
        return WorkerStartError(worker_id, reason, tail)

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
