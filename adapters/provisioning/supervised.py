"""What a supervisor knows of one process: `SupervisedProcess`, what both
kinds share, `SupervisedServer` (with its restart budget) and
`SupervisedWorker` (with its limits)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.limits import WorkerLimits
from allocation_ledger.adapters.provisioning.process_reports import (
    EventKind,
    ExitStatus,
    ProcessEvent,
    ProcessInfo,
    ProcessStatus,
)
from allocation_ledger.adapters.provisioning.run_records import RunRecord, WorkerRecord
from allocation_ledger.adapters.provisioning.server_spec import (
    RestartPolicy,
    ServerSpec,
)
from allocation_ledger.adapters.provisioning.worker_reports import (
    ExitCause,
    WorkerEvent,
    WorkerEventKind,
    WorkerInfo,
    WorkerStatus,
)

if TYPE_CHECKING:
    from allocation_ledger.adapters.provisioning.launch import ServerLaunch


class SupervisedProcess:
    """A process the supervisor runs or adopted (`pid` None: none runs).

    `process` is None when it was adopted from an earlier run: then its
    `argv` and `start_ticks` (/proc) tell it from a later process that got
    the same pid.
    """

    pid: int | None
    argv: tuple[str, ...]
    start_ticks: int | None
    process: subprocess.Popen[bytes] | None

    def is_ours(self) -> bool:
        """Whether its pid is still the process it started (/proc identity)."""
        return self.pid is not None and control.is_same_process(
            self.pid, self.argv, self.start_ticks
        )

    def exit_code(self) -> tuple[bool, int | None]:
        """(exited, returncode) of its process; returncode None when unknown.

        An adopted process is not our child (unless this Python process
        started it under an earlier supervisor): its exit shows as its pid no
        longer being the recorded process, with no returncode.
        """
        if self.pid is None:
            return True, None
        if self.process is not None:
            returncode = self.process.poll()
            return returncode is not None, returncode
        returncode = control.reap(self.pid)
        if returncode is not None:
            return True, returncode
        if self.is_ours():
            return False, None
        return True, control.reap(self.pid)  # it may have exited just now

    def ended(self, at: datetime) -> ExitStatus | None:
        """How its process ended, once it has (what it left in its process
        group is killed then); None while it runs, or when there is none."""
        if self.pid is None:
            return None
        exited, returncode = self.exit_code()
        if not exited:
            return None
        control.signal_group(self.pid, signal.SIGKILL)
        return ExitStatus.from_returncode(returncode, at)

    def terminate(
        self, grace_seconds: float, now: Callable[[], datetime]
    ) -> tuple[ExitStatus, dict[str, Any]]:
        """SIGTERM its process group, SIGKILL after grace_seconds; once the
        group is gone, how the process ended and, for the `stopped` event,
        its code or signal and whether SIGKILL was needed (`forced`)."""
        assert self.pid is not None, "no process to terminate"
        forced, returncode = control.terminate_group(
            self.pid, grace_seconds, self.process
        )
        if self.process is None and returncode is None:
            returncode = control.reap(self.pid)
        ended = ExitStatus.from_returncode(returncode, now())
        return ended, ended.as_detail() | {"forced": forced}


@dataclass(eq=False)
class SupervisedServer(SupervisedProcess):
    """The supervisor's mutable record of (pool, name); guarded by its lock.

    `wanted` says the server should run (the watcher restarts it);
    `generation` changes with every start, adoption or scheduled restart, so
    that a stale restart knows to give way.
    """

    pool: str
    name: str
    spec: ServerSpec | None
    port: int
    host: str
    endpoint: str
    log_path: Path
    status: ProcessStatus = "stopped"
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    argv: tuple[str, ...] = ()
    start_ticks: int | None = None
    started_at: datetime | None = None
    restarts: int = 0
    recent_restarts: deque[float] = field(default_factory=deque)
    last_exit: ExitStatus | None = None
    wanted: bool = False
    generation: int = 0

    def event(
        self,
        kind: EventKind,
        detail: Mapping[str, object],
        at: datetime,
        pid: int | None = None,
    ) -> ProcessEvent:
        """An event about this server (of its current process unless `pid`)."""
        return ProcessEvent(
            kind, self.pool, self.name, self.port, pid or self.pid, at, dict(detail)
        )

    def begin(self, launch: ServerLaunch) -> None:
        """A start is under way: take its spec, port and endpoint."""
        self.spec, self.port, self.host = launch.spec, launch.port, launch.host
        self.endpoint, self.log_path = launch.endpoint, launch.log_path
        self.status, self.wanted = "starting", True
        self.generation += 1

    def spawned(self, launch: ServerLaunch) -> None:
        """The started process exists (not yet answering)."""
        assert launch.process is not None
        self.process, self.pid, self.argv = (
            launch.process,
            launch.process.pid,
            launch.argv,
        )
        self.start_ticks, self.started_at = launch.start_ticks, launch.started_at

    def start_failed(self, launch: ServerLaunch) -> None:
        """The start failed; its process (if any) is gone."""
        self.status, self.wanted = "failed", False
        self.process = self.pid = None
        self.last_exit = launch.exit or self.last_exit

    def adopt(self, record: RunRecord) -> None:
        """Take over the process an earlier run recorded."""
        self.port, self.host, self.endpoint = record.port, record.host, record.endpoint
        self.status, self.wanted = "running", True
        self.process, self.pid = None, record.pid
        self.argv, self.start_ticks = record.argv, record.start_ticks
        self.started_at = datetime.fromisoformat(record.started_at)
        self.generation += 1

    def note_exit(self, at: datetime) -> ProcessEvent | None:
        """If the current process has exited: forget it, and the `exited`
        event (see `ended`)."""
        ended = self.ended(at)
        if ended is None:
            return None
        event = self.event("exited", ended.as_detail(), at)
        self.process = self.pid = None
        self.last_exit = ended
        return event

    def plan_restart(
        self, policy: RestartPolicy, at: datetime
    ) -> tuple[float | None, ProcessEvent | None]:
        """After an exit: (delay of the restart, None), or (None, `failed` event)."""
        delay = self.next_restart(policy) if self.spec is not None else None
        if delay is None:
            self.status, self.wanted = "failed", False
            reason = "too many restarts" if self.spec else "no spec to restart it"
            detail = {"restarts": len(self.recent_restarts), "reason": reason}
            return None, self.event("failed", detail, at)
        self.status = "starting"
        self.generation += 1
        return delay, None

    def info(self) -> ProcessInfo:
        """A snapshot for callers."""
        return ProcessInfo(
            pool=self.pool,
            name=self.name,
            port=self.port,
            endpoint=self.endpoint,
            pid=self.pid,
            status=self.status,
            started_at=self.started_at,
            restarts=self.restarts,
            last_exit=self.last_exit,
            log_path=self.log_path,
        )

    def is_alive(self) -> bool:
        """Whether the current process runs."""
        return self.pid is not None and not self.exit_code()[0]

    def next_restart(self, policy: RestartPolicy) -> float | None:
        """Book one restart and give its delay (seconds); None when over budget."""
        window_start = time.monotonic() - policy.window_seconds
        while self.recent_restarts and self.recent_restarts[0] < window_start:
            self.recent_restarts.popleft()
        made = len(self.recent_restarts)
        if made >= policy.max_restarts:
            return None
        self.recent_restarts.append(time.monotonic())
        self.restarts += 1
        return policy.delay(made)


class WorkerStart(NamedTuple):
    """What a start of a worker asks for."""

    pool: str
    allocation_id: str
    worker_id: str
    port: int
    argv: tuple[str, ...]


@dataclass(eq=False)
class SupervisedWorker(SupervisedProcess):
    """The supervisor's mutable record of one worker; guarded by its locks.

    `pid` is kept after it ended, for the record: never signal it then.
    """

    worker_id: str
    allocation_id: str
    pool: str
    port: int
    argv: tuple[str, ...]
    limits: WorkerLimits
    log_path: Path
    pid: int
    start_ticks: int | None
    started_at: datetime
    process: subprocess.Popen[bytes] | None = None
    status: WorkerStatus = "running"
    exit: ExitStatus | None = None
    cause: ExitCause | None = None
    ended_monotonic: float | None = None

    @classmethod
    def from_record(cls, record: WorkerRecord, log_path: Path) -> SupervisedWorker:
        """A worker an earlier run started, as its state file tells."""
        return cls(
            worker_id=record.worker_id,
            allocation_id=record.allocation_id,
            pool=record.pool,
            port=record.port,
            argv=record.argv,
            limits=record.limits,
            log_path=log_path,
            pid=record.pid,
            start_ticks=record.start_ticks,
            started_at=datetime.fromisoformat(record.started_at),
        )

    def record(self) -> WorkerRecord:
        """Its state file's content."""
        return WorkerRecord(
            worker_id=self.worker_id,
            allocation_id=self.allocation_id,
            pool=self.pool,
            port=self.port,
            pid=self.pid,
            argv=self.argv,
            start_ticks=self.start_ticks,
            started_at=self.started_at.isoformat(),
            limits=self.limits,
        )

    def matches(self, asked: WorkerStart) -> bool:
        """Whether a start with these facts asks for this very worker."""
        mine = (self.pool, self.allocation_id, self.worker_id, self.port, self.argv)
        return mine == asked

    def event(
        self, kind: WorkerEventKind, detail: Mapping[str, object], at: datetime
    ) -> WorkerEvent:
        """An event about this worker."""
        return WorkerEvent(
            kind,
            self.pool,
            self.allocation_id,
            self.worker_id,
            self.pid,
            at,
            dict(detail),
        )

    def info(self) -> WorkerInfo:
        """A snapshot for callers."""
        return WorkerInfo(
            worker_id=self.worker_id,
            allocation_id=self.allocation_id,
            pool=self.pool,
            port=self.port,
            pid=self.pid,
            status=self.status,
            started_at=self.started_at,
            exit=self.exit,
            cause=self.cause,
            limits=self.limits,
            log_path=self.log_path,
            argv=self.argv,
        )
