"""The machinery under WorkerProcesses: its state, starts, exits, stops, watcher.

`WorkerSupervision` (a `Supervisor` of WorkerEvents, supervisor.py) holds
what the supervisor knows (one SupervisedWorker per worker id, a lock per
worker id held by whoever starts, stops or notes the exit of that worker,
the state files and the limiter), spawns a worker in its limits, notes how a
worker ended, stops one, and runs the watcher that notices exits. Ended
workers are forgotten `keep_ended_seconds` after they ended (the ledger's
events are the record).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Literal

from allocation_ledger.adapters.provisioning.launch import ProcessLaunch
from allocation_ledger.adapters.provisioning.limits import (
    Limiter,
    WorkerLimits,
    group_name,
    release_groups,
)
from allocation_ledger.adapters.provisioning.process_reports import ExitStatus
from allocation_ledger.adapters.provisioning.run_records import (
    WorkerRecords,
    file_stem,
)
from allocation_ledger.adapters.provisioning.supervised import (
    SupervisedWorker,
    WorkerStart,
)
from allocation_ledger.adapters.provisioning.supervisor import (
    Supervisor,
    utc_now,
)
from allocation_ledger.adapters.provisioning.worker_launch import spawn_worker
from allocation_ledger.adapters.provisioning.worker_reports import (
    WorkerEvent,
    WorkerInfo,
    WorkerStartError,
    exit_cause,
    last_run_lines,
)

DEFAULT_GRACE_SECONDS = 5.0
DEFAULT_KEEP_ENDED_SECONDS = 3600.0


class WorkerSupervision(Supervisor[str, WorkerEvent]):
    """State, spawning, ending and the watcher; see WorkerProcesses for the API."""

    watcher_name = "worker-watcher"
    blocking_work = "a worker starts or stops"

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
        super().__init__(
            data_dir,
            on_event,
            now=now,
            watch_interval_seconds=watch_interval_seconds,
        )
        self.records = WorkerRecords(self.data_dir / "run" / "workers")
        self._environ = dict(os.environ if environ is None else environ)
        if enforce == "rlimit":
            self._limiter = Limiter.rlimit_only()
        else:
            name = group_name(self.data_dir)
            self._limiter = Limiter.detect(name, v2_parent=cgroup_v2_parent)
        self._keep_ended = keep_ended_seconds
        self._workers: dict[str, SupervisedWorker] = {}
        self._start_watching()

    # -- what it tells -----------------------------------------------------

    def enforcement(self) -> dict[str, str]:
        """How new workers are limited: `{"memory": "cgroup-v2" | "cgroup-v1" |
        "rlimit-as", "cpu": "cgroup-v2" | "cgroup-v1" | "none"}`, with a `note`
        saying why when a dimension fell back."""
        return self._limiter.enforcement.as_dict()

    def log_path(self, worker_id: str) -> Path:
        """Where the worker's output goes: <data_dir>/logs/worker-<worker_id>.log."""
        return self.data_dir / "logs" / f"worker-{file_stem(worker_id)}.log"

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

    def _find(
        self, worker_id: str, events: list[WorkerEvent], *, announce: bool
    ) -> SupervisedWorker | None:
        """The worker when it runs, here or as an earlier run recorded it
        (adopted then); how it ended is noted (see `_take_record`)."""
        running = self._running(worker_id, events)
        if running is not None:
            return running
        return self._take_record(worker_id, events, announce=announce)

    def _running_ids(self) -> list[str]:
        """The ids of the workers that run, as this supervisor last saw them."""
        with self._lock:
            return sorted(w for w, x in self._workers.items() if x.status == "running")

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
        # its pid failed the identity check: it may be another's now, so
        # its process group is not signalled
        unknown = ExitStatus.from_returncode(None, self._now())
        self._ended(worker, unknown, events if announce else [])
        if announce:
            with self._lock:
                self._workers[worker_id] = worker
        return None

    def _note_exit(self, worker: SupervisedWorker, events: list[WorkerEvent]) -> bool:
        """Whether the worker's process has ended (then noted: `exited`)."""
        ended = worker.ended(self._now())
        if ended is not None:
            self._ended(worker, ended, events)
        return ended is not None

    def _ended(
        self, worker: SupervisedWorker, ended: ExitStatus, events: list[WorkerEvent]
    ) -> None:
        """The worker ended by itself: find why, clean up, tell. What it left
        in its cgroups is killed."""
        cause, detail = exit_cause(ended, worker.limits, worker.log_path)
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
        ended, detail = worker.terminate(grace_seconds, self._now)
        released = release_groups(worker.limits)
        self.records.remove(worker.worker_id)
        with self._lock:
            worker.status, worker.exit, worker.cause = "stopped", ended, "stopped"
            worker.process, worker.ended_monotonic = None, time.monotonic()
        detail["reason"] = reason
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
        asked: WorkerStart,
        environment: Mapping[str, str],
        limits: WorkerLimits,
        events: list[WorkerEvent],
    ) -> SupervisedWorker:
        """Spawn the worker asked for in its limits, write its state file,
        tell it `started`."""
        pool, allocation_id, worker_id, port, argv = asked
        launch = ProcessLaunch(argv, self.log_path(worker_id), self._now)
        try:
            process = launch.spawn_with(
                lambda: spawn_worker(argv, environment, launch.log_path, limits)
            )
        except OSError as exc:
            release_groups(limits)
            tail = last_run_lines(launch.log_path)
            reason = exc.strerror if exc.strerror and exc.filename is None else str(exc)
            raise WorkerStartError(worker_id, reason, tail) from exc
        except BaseException:
            release_groups(limits)
            raise
        assert launch.started_at is not None
        worker = SupervisedWorker(
            worker_id=worker_id,
            allocation_id=allocation_id,
            pool=pool,
            port=port,
            argv=argv,
            limits=limits,
            log_path=launch.log_path,
            pid=process.pid,
            start_ticks=launch.start_ticks,
            started_at=launch.started_at,
            process=process,
        )
        try:
            self.records.write(worker.record())
        except BaseException as exc:
            launch.abort(0.5)
            release_groups(limits)
            self.records.remove(worker_id)
            if isinstance(exc, OSError):
                reason = f"cannot write its state file: {exc}"
                raise WorkerStartError(worker_id, reason) from exc
            raise
        with self._lock:
            self._workers[worker_id] = worker
        detail = {
            "argv": list(argv),
            "log": str(launch.log_path),
            "limits": limits.as_detail(),
        }
        events.append(worker.event("started", detail, self._now()))
        return worker

    # -- watching ----------------------------------------------------------------

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
