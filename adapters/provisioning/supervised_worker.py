"""What the supervisor knows of one worker process."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.limits import WorkerLimits
from allocation_ledger.adapters.provisioning.process_reports import ExitStatus
from allocation_ledger.adapters.provisioning.worker_records import WorkerRecord
from allocation_ledger.adapters.provisioning.worker_reports import (
    ExitCause,
    WorkerEvent,
    WorkerEventKind,
    WorkerInfo,
    WorkerStatus,
)


@dataclass(eq=False)
class SupervisedWorker:
    """The supervisor's mutable record of one worker; guarded by its locks.

    `process` is the Popen when the worker is our child, None when it was
    adopted from an earlier run (then only `pid` and its identity are known).
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

    def is_ours(self) -> bool:
        """Whether its pid is still the process it started (/proc identity)."""
        return control.is_same_process(self.pid, self.argv, self.start_ticks)

    def exit_code(self) -> tuple[bool, int | None]:
        """(exited, returncode) of its process; returncode None when unknown.

        An adopted worker is not our child (unless this Python process started
        it under an earlier supervisor): its exit shows as its pid no longer
        being the recorded process, with no returncode.
        """
        if self.process is not None:
            returncode = self.process.poll()
            return returncode is not None, returncode
        returncode = control.reap(self.pid)
        if returncode is not None:
            return True, returncode
        if self.is_ours():
            return False, None
        return True, control.reap(self.pid)  # it may have exited just now

    def matches(
        self, allocation_id: str, pool: str, port: int, argv: tuple[str, ...]
    ) -> bool:
        """Whether a start with these facts asks for this very worker."""
        mine = (self.allocation_id, self.pool, self.port, self.argv)
        return mine == (allocation_id, pool, port, argv)

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
