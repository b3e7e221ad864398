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

import asyncio
import json
import logging
import os
import shlex
import signal
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.limits import (
    Limiter,
    WorkerLimits,
    group_name,
    release_groups,
)
from allocation_ledger.adapters.provisioning.process_reports import ExitStatus
from allocation_ledger.adapters.provisioning.supervised_worker import (
    SupervisedWorker,
)
from allocation_ledger.adapters.provisioning.worker_launch import spawn_worker
from allocation_ledger.adapters.provisioning.worker_records import (
    WorkerRecord,
    WorkerRecords,
)
from allocation_ledger.adapters.provisioning.worker_reports import (
    WorkerEvent,
    WorkerInfo,
    WorkerStartError,
    exit_cause,
    last_run_lines,
)

logger = logging.getLogger(__name__)

ENV_ALLOCATION_ID = "LEDGER_ALLOCATION_ID"
ENV_WORKER_ID = "LEDGER_WORKER_ID"
ENV_MCP_ENDPOINTS = "LEDGER_MCP_ENDPOINTS"
ENV_POOL = "LEDGER_POOL"
ENV_WORKER_PORT = "LEDGER_WORKER_PORT"
DEFAULT_GRACE_SECONDS = 5.0


def utc_now() -> datetime:
    """The default clock: the current time in UTC."""
    return datetime.now(UTC)


class WorkerProcesses:
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
    """

    def __init__(
        self,
        data_dir: Path,
        on_event: Callable[[WorkerEvent], None] | None = None,
        *,
        enforce: Literal["auto", "rlimit"] = "auto",
        cgroup_v2_parent: Path | None = None,
        environ: Mapping[str, str] | None = None,
        now: Callable[[], datetime] = utc_now,
        watch_interval_seconds: float = 0.2,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.records = WorkerRecords(self.data_dir / "run" / "workers")
        self._on_event = on_event or (lambda event: None)
        self._environ = dict(os.environ if environ is None else environ)
        self._now = now
        if enforce == "rlimit":
            self._limiter = Limiter.rlimit_only()
        else:
            name = group_name(self.data_dir)
            self._limiter = Limiter.detect(name, v2_parent=cgroup_v2_parent)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._workers: dict[str, SupervisedWorker] = {}
        self._closing = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch,
            args=(watch_interval_seconds,),
            name="worker-watcher",
            daemon=True,
        )
        self._watcher.start()

    # -- what it tells -----------------------------------------------------

    def enforcement(self) -> dict[str, str]:
        """How new workers are limited: `{"memory": "cgroup-v2" | "cgroup-v1" |
        "rlimit-as", "cpu": "cgroup-v2" | "cgroup-v1" | "none"}`, with a `note`
        saying why when a dimension fell back."""
        return self._limiter.enforcement.as_dict()

    def log_path(self, worker_id: str) -> Path:
        """Where the worker's output goes: <data_dir>/logs/worker-<worker_id>.log."""
        return self.data_dir / "logs" / f"worker-{quote(worker_id, safe='._-')}.log"

    def status(self) -> list[WorkerInfo]:
        """Every worker this supervisor started or adopted, by worker id."""
        with self._lock:
            return [self._workers[key].info() for key in sorted(self._workers)]

    def info(self, worker_id: str) -> WorkerInfo | None:
        """The worker's info; None when this supervisor never ran it."""
        with self._lock:
            worker = self._workers.get(worker_id)
            return None if worker is None else worker.info()

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
        events: list[WorkerEvent] = []
        try:
            with self._key_lock(worker_id):
                running = self._running(worker_id, events)
                if running is None:
                    running = self._take_record(worker_id, events, announce=True)
                if running is not None:
                    if running.matches(allocation_id, pool, port, argv):
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
                worker = self._spawn(
                    pool=pool,
                    allocation_id=allocation_id,
                    worker_id=worker_id,
                    port=port,
                    argv=argv,
                    environment=environment,
                    limits=limits,
                )
                detail = {
                    "argv": list(argv),
                    "log": str(worker.log_path),
                    "limits": limits.as_detail(),
                }
                events.append(worker.event("started", detail, self._now()))
                with self._lock:
                    return worker.info()
        finally:
            self._emit(events)

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
        events: list[WorkerEvent] = []
        try:
            with self._key_lock(worker_id):
                worker = self._running(worker_id, events)
                if worker is None:
                    worker = self._take_record(worker_id, events, announce=False)
                if worker is not None:
                    self._stop_locked(worker, grace_seconds, events, "requested")
                with self._lock:
                    known = self._workers.get(worker_id)
                    return None if known is None else known.info()
        finally:
            self._emit(events)

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
        events: list[WorkerEvent] = []
        done: list[WorkerEvent] = []
        try:
            for path, record in self.records:
                if record is None:
                    path.unlink(missing_ok=True)
                    continue
                with self._key_lock(record.worker_id):
                    if self._running(record.worker_id, events) is None:
                        wanted = record.worker_id in expected
                        self._take_record(record.worker_id, events, announce=wanted)
                done += self._emit(events)
            with self._lock:
                ids = [w for w, x in self._workers.items() if x.status == "running"]
            for worker_id in sorted(ids):
                with self._key_lock(worker_id):
                    worker = self._running(worker_id, events)
                    if worker is not None and worker_id not in expected:
                        self._stop_locked(worker, 5.0, events, "not expected")
                done += self._emit(events)
        finally:
            done += self._emit(events)
        return done

    def close(self, stop_all: bool = False) -> None:
        """Stop watching; with stop_all, stop every running worker too.

        Without stop_all the workers keep running, and their state files let
        the next run on this data directory adopt them. Parent cgroups left
        empty are removed.
        """
        self._closing.set()
        if threading.current_thread() is not self._watcher:
            self._watcher.join()
        if stop_all:
            with self._lock:
                ids = [w for w, x in self._workers.items() if x.status == "running"]
            for worker_id in ids:
                events: list[WorkerEvent] = []
                try:
                    with self._key_lock(worker_id):
                        worker = self._running(worker_id, events)
                        if worker is not None:
                            reason = "supervisor closed"
                            self._stop_locked(worker, 5.0, events, reason)
                finally:
                    self._emit(events)
        self._limiter.close()

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- under a worker's key lock ---------------------------------------------

    def _running(
        self, worker_id: str, events: list[WorkerEvent]
    ) -> SupervisedWorker | None:
        """The worker when it runs; an exit found on the way is noted."""
        with self._lock:
            worker = self._workers.get(worker_id)
        if worker is None or worker.status != "running":
            return None
        return None if self._note_exit(worker, events) else worker

    def _take_record(
        self, worker_id: str, events: list[WorkerEvent], *, announce: bool
    ) -> SupervisedWorker | None:
        """Adopt the worker an earlier run recorded, if its process is still the
        recorded one; else note how it ended (when `announce`) and forget it."""
        record = self.records.read(worker_id)
        if record is None:
            return None
        worker = SupervisedWorker.from_record(record, self.log_path(worker_id))
        if worker.is_ours():
            with self._lock:
                self._workers[worker_id] = worker
            if announce:
                detail = {"limits": record.limits.as_detail()}
                events.append(worker.event("adopted", detail, self._now()))
            return worker
        self._ended(worker, None, events if announce else [], kill_group=False)
        if announce:
            with self._lock:
                self._workers[worker_id] = worker
        return None

    def _note_exit(self, worker: SupervisedWorker, events: list[WorkerEvent]) -> bool:
        """Whether the worker's process has ended (then noted: `exited`)."""
        exited, returncode = worker.exit_code()
        if exited:
            self._ended(worker, returncode, events)
        return exited

    def _ended(
        self,
        worker: SupervisedWorker,
        returncode: int | None,
        events: list[WorkerEvent],
        *,
        kill_group: bool = True,
    ) -> None:
        """The worker ended by itself: find why, clean up, tell.

        What it left in its process group is killed, unless `kill_group` is
        False (its pid failed the identity check, so it may be another's now);
        what it left in its cgroups is killed in any case.
        """
        ended = ExitStatus.from_returncode(returncode, self._now())
        cause, detail = exit_cause(ended, worker.limits, worker.log_path)
        if kill_group and control.group_alive(worker.pid):
            control.signal_group(worker.pid, signal.SIGKILL)
        release_groups(worker.limits)
        self.records.remove(worker.worker_id)
        with self._lock:
            worker.status, worker.exit, worker.cause = "exited", ended, cause
            worker.process = None
        events.append(worker.event("exited", {"cause": cause} | detail, ended.at))

    def _stop_locked(
        self,
        worker: SupervisedWorker,
        grace_seconds: float,
        events: list[WorkerEvent],
        reason: str,
    ) -> None:
        """Stop a running worker (its key lock held)."""
        forced, returncode = control.terminate_group(
            worker.pid, grace_seconds, worker.process
        )
        if worker.process is None and returncode is None:
            returncode = control.reap(worker.pid)
        released = release_groups(worker.limits)
        self.records.remove(worker.worker_id)
        ended = ExitStatus.from_returncode(returncode, self._now())
        with self._lock:
            worker.status, worker.exit, worker.cause = "stopped", ended, "stopped"
            worker.process = None
        detail = ended.as_detail() | {"forced": forced, "reason": reason}
        if not released:
            detail["cgroups_left"] = [str(g) for g in worker.limits.groups()]
        events.append(worker.event("stopped", detail, ended.at))

    def _prepare(
        self, worker_id: str, cpu_millicores: int, memory_mib: int
    ) -> WorkerLimits:
        try:
            return self._limiter.prepare(worker_id, cpu_millicores, memory_mib)
        except OSError as exc:
            raise WorkerStartError(worker_id, f"cannot set its limits: {exc}") from exc

    def _spawn(
        self,
        *,
        pool: str,
        allocation_id: str,
        worker_id: str,
        port: int,
        argv: tuple[str, ...],
        environment: Mapping[str, str],
        limits: WorkerLimits,
    ) -> SupervisedWorker:
        """Spawn the worker in its limits and write its state file."""
        log_path = self.log_path(worker_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"--- {self._now().isoformat()} starting: {shlex.join(argv)}\n")
        try:
            process = spawn_worker(argv, environment, log_path, limits)
        except OSError as exc:
            release_groups(limits)
            tail = last_run_lines(log_path)
            raise WorkerStartError(worker_id, str(exc), tail) from exc
        except BaseException:
            release_groups(limits)
            raise
        worker = SupervisedWorker(
            worker_id=worker_id,
            allocation_id=allocation_id,
            pool=pool,
            port=port,
            argv=argv,
            limits=limits,
            log_path=log_path,
            pid=process.pid,
            start_ticks=control.start_ticks(process.pid),
            started_at=self._now(),
            process=process,
        )
        try:
            self.records.write(worker.record())
        except BaseException as exc:
            control.terminate_group(process.pid, 0.5, process)
            release_groups(limits)
            self.records.remove(worker_id)
            if isinstance(exc, OSError):
                reason = f"cannot write its state file: {exc}"
                raise WorkerStartError(worker_id, reason) from exc
            raise
        with self._lock:
            self._workers[worker_id] = worker
        return worker

    # -- watching ----------------------------------------------------------------

    def _watch(self, interval: float) -> None:
        while not self._closing.wait(interval):
            try:
                self._look()
            except Exception:
                logger.exception("the worker watcher failed one round")

    def _look(self) -> None:
        with self._lock:
            running = [w for w in self._workers.values() if w.status == "running"]
        events: list[WorkerEvent] = []
        for worker in running:
            lock = self._key_lock(worker.worker_id)
            if not lock.acquire(blocking=False):
                continue  # a start or stop has it; it will see the exit
            try:
                if worker.status == "running":
                    self._note_exit(worker, events)
            finally:
                lock.release()
            self._emit(events)

    # -- small parts -------------------------------------------------------------

    def _key_lock(self, worker_id: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(worker_id, threading.Lock())

    def _check_open(self, *, loop_only: bool = False) -> None:
        """Raise RuntimeError after close() (for starts), or in a running loop."""
        if not loop_only and self._closing.is_set():
            raise RuntimeError("WorkerProcesses is closed")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise RuntimeError(
            "WorkerProcesses blocks while a worker starts or stops: call it from a "
            "worker thread (anyio.to_thread.run_sync), not inside a running loop"
        )

    def _emit(self, events: list[WorkerEvent]) -> list[WorkerEvent]:
        """Tell on_event of the events (no lock held), empty the list; the events."""
        told = list(events)
        events.clear()
        for event in told:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event failed for %s", event)
        return told


__all__ = [
    "ENV_ALLOCATION_ID",
    "ENV_MCP_ENDPOINTS",
    "ENV_WORKER_ID",
    "WorkerEvent",
    "WorkerInfo",
    "WorkerProcesses",
    "WorkerRecord",
    "WorkerStartError",
]
