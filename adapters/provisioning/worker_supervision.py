"""The machinery under WorkerProcesses: its state, starts, exits, stops, watcher.

`WorkerSupervision` holds what the supervisor knows (one SupervisedWorker per
worker id, a lock per worker id held by whoever starts, stops or notes the
exit of that worker, the state files and the limiter), spawns a worker in its
limits, notes how a worker ended, stops one, and runs the watcher thread that
notices exits. Events are collected while locks are held and told to
`on_event` only once every lock is released. Ended workers are forgotten
`keep_ended_seconds` after they ended (the ledger's events are the record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
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
from allocation_ledger.adapters.provisioning.worker_records import WorkerRecords
from allocation_ledger.adapters.provisioning.worker_reports import (
    WorkerEvent,
    WorkerInfo,
    WorkerStartError,
    exit_cause,
    last_run_lines,
)

logger = logging.getLogger(__name__)

DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_KEEP_ENDED_SECONDS = 3600.0


def utc_now() -> datetime:
    """The default clock: the current time in UTC."""
    return datetime.now(UTC)


class KeyLocks:
    """One lock per worker id, existing only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str, *, wait: bool = True) -> Iterator[bool]:
        """Hold key's lock for the block; yields False (not held) when `wait`
        is False and someone else holds it."""
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            held = lock.acquire(blocking=wait)
            try:
                yield held
            finally:
                if held:
                    lock.release()
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class WorkerSupervision:
    """State, spawning, ending and the watcher; see WorkerProcesses for the API."""

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
        keep_ended_seconds: float = DEFAULT_KEEP_ENDED_SECONDS,
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
        self._keys = KeyLocks()
        self._keep_ended = keep_ended_seconds
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
        """The worker's info; None when this supervisor never ran it (or has
        forgotten it, keep_ended_seconds after it ended)."""
        with self._lock:
            worker = self._workers.get(worker_id)
            return None if worker is None else worker.info()

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
            worker.process, worker.ended_monotonic = None, time.monotonic()
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
            worker.process, worker.ended_monotonic = None, time.monotonic()
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
            with self._keys.hold(worker.worker_id, wait=False) as held:
                # when a start or stop holds it, that one sees the exit
                if held and worker.status == "running":
                    self._note_exit(worker, events)
            self._emit(events)
        self._forget_ended()

    def _forget_ended(self) -> None:
        """Drop the workers that ended more than keep_ended_seconds ago."""
        horizon = time.monotonic() - self._keep_ended
        with self._lock:
            for worker_id, worker in list(self._workers.items()):
                if worker.ended_monotonic is not None and (
                    worker.ended_monotonic < horizon
                ):
                    del self._workers[worker_id]

    # -- small parts -------------------------------------------------------------

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
