"""What the supervisor of MCP server processes tells: status, events, errors."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

ProcessStatus = Literal["starting", "running", "stopping", "stopped", "failed"]
"""`starting`: spawned (or waiting to be restarted), the endpoint not yet
answering; `running`: the endpoint answered; `stopping`: being stopped;
`stopped`: stopped on request; `failed`: the start failed, or the process
exited more often than the restart policy allows."""

EventKind = Literal[
    "started",
    "health_passed",
    "health_failed",
    "exited",
    "restarted",
    "failed",
    "stopped",
    "adopted",
    "discarded",
]
"""`started`: a process was spawned (detail: argv, log); `health_passed` /
`health_failed`: the endpoint answered MCP, or did not within the start
timeout, or the process exited first (detail: tools, protocol_version or
reason, stderr_tail); `exited`: a process exited on its own (detail: code or
signal); `restarted`: the watcher started it again (detail: attempt, backoff
in seconds); `failed`: the watcher gave up (detail: restarts); `stopped`:
stopped on request (detail: code or signal, forced); `adopted`: a process of
an earlier run was taken over; `discarded`: an earlier run's record was
dropped because its process was gone, not ours or not answering (detail:
reason, and code or signal when it was stopped)."""


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: `code` (exit status) or `signal` (number), at `at`.

    One of code and signal is set; both are None when the process was not our
    child (adopted), so its status could not be read.
    """

    code: int | None
    signal: int | None
    at: datetime

    @classmethod
    def from_returncode(cls, returncode: int | None, at: datetime) -> ExitStatus:
        """From a Popen returncode (negative: killed by that signal)."""
        if returncode is None:
            return cls(code=None, signal=None, at=at)
        if returncode < 0:
            return cls(code=None, signal=-returncode, at=at)
        return cls(code=returncode, signal=None, at=at)

    def describe(self) -> str:
        """`exit code 3`, `signal 9 (SIGKILL)` or `exit status unknown`."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                return f"signal {self.signal}"
            return f"signal {self.signal} ({name})"
        if self.code is not None:
            return f"exit code {self.code}"
        return "exit status unknown"

    def as_detail(self) -> dict[str, Any]:
        """`{"code": ..., "signal": ...}` for an event's detail."""
        return {"code": self.code, "signal": self.signal}


@dataclass(frozen=True)
class ProcessInfo:
    """One MCP server process of a pool, as the supervisor knows it.

    `pid` is None when no process runs (stopped, failed, waiting for a
    restart); `started_at` is when the current (or last) process started;
    `restarts` counts restarts made by the watcher since this supervisor
    first started or adopted it; `last_exit` is how the last process ended.
    """

    pool: str
    name: str
    port: int
    endpoint: str
    pid: int | None
    status: ProcessStatus
    started_at: datetime | None
    restarts: int
    last_exit: ExitStatus | None
    log_path: Path


@dataclass(frozen=True)
class ProcessEvent:
    """Something that happened to an MCP server process, for the ledger to record.

    `kind` is one of EventKind; `pid` is the process concerned (None when no
    process was spawned); `detail` holds the kind's facts (JSON-friendly
    values); `at` comes from the supervisor's clock.
    """

    kind: EventKind
    pool: str
    name: str
    port: int
    pid: int | None
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)


class ProcessStartError(RuntimeError):
    """A process (`what`) did not start, and nothing of it runs: `reason` in
    one line; the message quotes `tail`, the last lines of its log."""

    def __init__(self, what: str, reason: str, tail: str) -> None:
        self.reason = reason
        message = f"{what} did not start: {reason}"
        if tail:
            message += "\n--- last lines of its log ---\n" + tail
        super().__init__(message)


class ServerStartError(ProcessStartError):
    """An MCP server did not start: it could not be spawned, exited before its
    endpoint answered, or did not answer within its start timeout.

    Nothing of it is left running. `stderr_tail` holds the last lines of its
    log (its stdout and stderr), `reason` says what went wrong in one line.
    """

    def __init__(self, name: str, pool: str, reason: str, stderr_tail: str) -> None:
        self.name = name
        self.pool = pool
        self.stderr_tail = stderr_tail
        super().__init__(f"MCP server {name!r} of pool {pool!r}", reason, stderr_tail)
