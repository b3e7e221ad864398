"""What the supervisor of worker processes tells: status, causes, events, errors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from allocation_ledger.adapters.provisioning import limits as worker_limits
from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.limits import WorkerLimits
from allocation_ledger.adapters.provisioning.process_reports import (
    ExitStatus,
    ProcessStartError,
)

WorkerStatus = Literal["running", "exited", "stopped"]
"""`running`: its process runs; `exited`: it ended by itself (or was killed
by anything but a stop: the kernel for its memory, a signal from outside);
`stopped`: stopped on request. Workers are never restarted."""

ExitCause = Literal["exited", "signal", "memory_limit", "stopped", "unknown"]
"""Why a worker ended. `exited`: it exited with a code; `signal`: a signal
killed it; `memory_limit`: it was killed, or failed, for passing its memory
(see `exit_cause` for the evidence each mechanism gives); `stopped`: stopped
on request; `unknown`: its exit status could not be read (it was adopted
from an earlier run, so it is not a child of this process)."""

WorkerEventKind = Literal["started", "ready", "exited", "stopped", "adopted"]
"""`started`: spawned (detail: argv, log, limits); `ready`: it passed its
readiness check (detail: check, seconds, port); `exited`: it ended by
itself (detail: code, signal, cause, oom_kills, evidence, log_tail);
`stopped`: stopped on request or because nothing expects it any more
(detail: code, signal, forced, reason); `adopted`: a process an earlier run
started was taken over (detail: limits)."""

LOG_TAIL_LINES = 10
RLIMIT_MEMORY_SIGNS = (
    "memoryerror",
    "cannot allocate memory",
    "out of memory",
    "bad_alloc",
    "outofmemoryerror",
    "memory allocation failed",
)
"""Lines a program prints when an allocation fails, lower case (Python, C,
C++, Go, Java, Rust); under RLIMIT_AS, the only sign of a memory limit."""


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process, as the supervisor knows it.

    `pid` is the process it ran (kept after it ended, for the record: never
    signal it then); `exit` and `cause` are set once it ended; `limits` are
    the limits in force on it; `argv` is the command it ran.
    """

    worker_id: str
    allocation_id: str
    pool: str
    port: int
    pid: int
    status: WorkerStatus
    started_at: datetime | None
    exit: ExitStatus | None
    cause: ExitCause | None
    limits: WorkerLimits
    log_path: Path
    argv: tuple[str, ...]


@dataclass(frozen=True)
class WorkerEvent:
    """Something that happened to a worker process, for the ledger to record.

    `kind` is one of WorkerEventKind; `detail` holds the kind's facts
    (JSON-friendly values); `at` comes from the supervisor's clock.
    """

    kind: WorkerEventKind
    pool: str
    allocation_id: str
    worker_id: str
    pid: int | None
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)


class WorkerStartError(ProcessStartError):
    """A worker could not be started: its command could not be executed, its
    limits could not be set up, or its state file not written.

    Nothing of it is left running. `log_tail` holds the last lines of its log.
    """

    def __init__(self, worker_id: str, reason: str, log_tail: str = "") -> None:
        self.worker_id = worker_id
        self.log_tail = log_tail
        super().__init__(f"worker {worker_id!r}", reason, log_tail)


def exit_cause(
    ended: ExitStatus, limits: WorkerLimits, log_path: Path
) -> tuple[ExitCause, dict[str, Any]]:
    """Why a worker that ended by itself ended, and the facts for its event.

    - A cgroup memory limit: the kernel counted an OOM kill in the worker's
      group (`oom_kills` > 0) and the worker did not exit with code 0.
    - RLIMIT_AS: the worker exited non-zero, or by a signal, and its last log
      lines show a failed allocation (e.g. Python's MemoryError); a best
      reading, with the line quoted as `evidence`.
    - Otherwise `signal`, `exited`, or `unknown` when the status was not ours
      to read.
    """
    tail = last_run_lines(log_path)
    kills = worker_limits.memory_kills(limits)
    detail: dict[str, Any] = ended.as_detail() | {"oom_kills": kills}
    known = ended.code is not None or ended.signal is not None
    failed = ended.code != 0
    if kills and failed:
        where = "memory.events" if limits.memory == "cgroup-v2" else "oom_control"
        detail["evidence"] = f"the kernel counted {kills} OOM kill(s) ({where})"
        return "memory_limit", detail | {"log_tail": tail}
    if limits.memory == "rlimit-as" and failed and known:
        sign = next(
            (
                line
                for line in reversed(tail.splitlines())
                if any(s in line.lower() for s in RLIMIT_MEMORY_SIGNS)
            ),
            None,
        )
        if sign is not None:
            detail["evidence"] = f"its log: {sign.strip()[:200]}"
            return "memory_limit", detail | {"log_tail": tail}
    detail["log_tail"] = tail
    if not known:
        return "unknown", detail
    if ended.signal is not None:
        return "signal", detail
    return "exited", detail


def last_run_lines(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the log written since the worker's latest start."""
    tail = control.log_tail(log_path, 200).splitlines()
    starts = [i for i, line in enumerate(tail) if line.startswith("--- ")]
    since = tail[starts[-1] + 1 :] if starts else tail
    return "\n".join(since[-lines:])
