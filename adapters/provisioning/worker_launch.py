"""Spawning one worker inside its limits (through worker_exec.py).

The worker is the leader of a process group of its own, like a server
(`process_control.spawn`), but it first runs the small worker_exec.py
program, which joins the worker's cgroups and sets its RLIMIT_AS and then
execs the worker's argv in the same process. A pipe tells the supervisor
whether that exec happened, so a command that cannot be executed is an
OSError here, as with subprocess.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning import worker_exec
from allocation_ledger.adapters.provisioning.limits import WorkerLimits, procs_files

EXEC_PROGRAM = Path(worker_exec.__file__).resolve()
EXEC_TIMEOUT_SECONDS = 30.0


def spawn_worker(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    limits: WorkerLimits,
    *,
    timeout_seconds: float = EXEC_TIMEOUT_SECONDS,
) -> subprocess.Popen[bytes]:
    """Start argv in its limits, output appended to log_path; once it runs.

    Returns when the process has exec'd argv (so /proc shows argv as its
    command line). Raises OSError when argv[0] cannot be executed, the
    cgroups cannot be joined or the limit set (the process is gone then, and
    the reason is in the log), or the exec does not happen within
    timeout_seconds.
    """
    read_fd, write_fd = os.pipe()
    setup = {
        "procs": procs_files(limits),
        "rlimit_as": limits.rlimit_as_bytes,
        "report_fd": write_fd,
    }
    command = [sys.executable, "-I", "-S", str(EXEC_PROGRAM), json.dumps(setup)]
    try:
        process = control.spawn([*command, "--", *argv], env, log_path, (write_fd,))
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        report = _read_report(read_fd, timeout_seconds, argv[0])
    except BaseException:
        _kill(process)
        raise
    finally:
        os.close(read_fd)
    if report is not None:
        _kill(process)
        raise report
    return process


def _read_report(read_fd: int, timeout_seconds: float, program: str) -> OSError | None:
    """None once the pipe closes empty (the exec happened); else the error
    (a `program` that does not exist is worded `command not found`)."""
    deadline = time.monotonic() + timeout_seconds
    data = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return TimeoutError(
                errno.ETIMEDOUT,
                f"the worker did not begin within {timeout_seconds:g} s",
            )
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    try:
        report = json.loads(data)
        code = int(report["errno"]) if report.get("errno") is not None else None
        if report["step"] == "execute" and code in (errno.ENOENT, errno.ENOTDIR):
            return FileNotFoundError(code, f"command not found: {program!r}")
        return OSError(code, f"cannot {report['step']}: {report['message']}")
    except (ValueError, KeyError, TypeError):
        return OSError(None, data.decode(errors="replace"))


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the group and collect the process (it never became the worker)."""
    control.signal_group(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5.0)
