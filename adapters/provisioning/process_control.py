"""POSIX process handling for the supervisor: spawn, identify, signal, wait.

Every server runs as the leader of a process group of its own
(`start_new_session`), so its group id is its pid and a signal to the group
reaches everything it started (the stdio bridge keeps its child in it).
Linux only where it reads /proc (identity checks).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

POLL_SECONDS = 0.05
TAIL_BYTES = 64 * 1024


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start argv as the leader of a new process group, output appended to log_path.

    stdin is /dev/null; stdout and stderr both go to the log; of this
    process's file descriptors, only `pass_fds` are inherited. Raises OSError
    when argv[0] cannot be executed (the reason is also written to the log).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                start_new_session=True,
                close_fds=True,
                pass_fds=tuple(pass_fds),
            )
        except OSError as exc:
            log.write(f"cannot start {argv[0]!r}: {exc}\n".encode())
            raise


def start_ticks(pid: int) -> int | None:
    """The start time of pid in clock ticks since boot (/proc/PID/stat field 22).

    None when there is no such process (or it is a zombie).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def command_line(pid: int) -> list[str] | None:
    """The argv of pid from /proc/PID/cmdline; None when unreadable."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]


def is_same_process(pid: int, argv: Sequence[str], ticks: int | None) -> bool:
    """Whether pid is alive and is the process started with argv at ticks."""
    if ticks is None:
        return False
    return start_ticks(pid) == ticks and command_line(pid) == list(argv)


def is_alive(pid: int) -> bool:
    """Whether pid exists and is not a zombie."""
    return start_ticks(pid) is not None


def group_alive(pgid: int) -> bool:
    """Whether any process of group pgid exists (zombies included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, signum: int) -> bool:
    """Send signum to process group pgid; False when the group is gone (or not ours)."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def reap(pid: int) -> int | None:
    """Collect pid if it is a child of ours that has exited; its returncode.

    None when it still runs or is not our child (then its status is lost to us).
    """
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def wait_gone(
    pid: int, deadline: float, process: subprocess.Popen[bytes] | None
) -> tuple[bool, int | None]:
    """Wait until pid has exited, up to a time.monotonic() deadline.

    Returns (gone, returncode); the returncode is known when pid is our child
    (`process`, or a child of this Python process found by waitpid).
    """
    while True:
        if process is not None:
            if process.poll() is not None:
                return True, process.returncode
        else:
            returncode = reap(pid)
            if returncode is not None:
                return True, returncode
            if not is_alive(pid):  # gone, or just now a zombie (of ours?)
                return True, reap(pid)
        if time.monotonic() >= deadline:
            return False, None
        time.sleep(POLL_SECONDS)


def terminate_group(
    pid: int, grace_seconds: float, process: subprocess.Popen[bytes] | None = None
) -> tuple[bool, int | None]:
    """SIGTERM the group led by pid, SIGKILL it after grace_seconds, wait for it.

    `process` is the Popen of pid when it is our child. Returns (forced,
    returncode): forced when SIGKILL was needed; the returncode when known
    (see wait_gone). Waits until the leader and the rest of its group are
    gone (bounded: 5 s after SIGKILL).
    """
    forced = False
    signal_group(pid, signal.SIGTERM)
    gone, returncode = wait_gone(pid, time.monotonic() + grace_seconds, process)
    if not gone:
        forced = True
        signal_group(pid, signal.SIGKILL)
        gone, returncode = wait_gone(pid, time.monotonic() + 5.0, process)
    # Members that outlived the leader (a bridge's child, say) get the same.
    deadline = time.monotonic() + grace_seconds
    while group_alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(POLL_SECONDS)
    if group_alive(pid):
        forced = True
        signal_group(pid, signal.SIGKILL)
        end = time.monotonic() + 5.0
        while group_alive(pid) and time.monotonic() < end:
            time.sleep(POLL_SECONDS)
    return forced, returncode


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR, as servers do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def accepts_connections(host: str, port: int, timeout_seconds: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection((host, port), timeout=timeout_seconds),
    ):
        return True
    return False


def wait_port_free(host: str, port: int, timeout_seconds: float) -> bool:
    """Wait (up to timeout_seconds) until nothing listens on host:port."""
    deadline = time.monotonic() + timeout_seconds
    while not port_is_free(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def log_size(path: Path) -> int:
    """The size of a log file in bytes (0 when it does not exist): where the
    next start's lines will begin."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, lines: int = 20, since: int = 0) -> str:
    """The last `lines` lines of a log file written after byte offset `since`
    ('' when it does not exist); earlier runs' lines are never quoted."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(since, size - TAIL_BYTES))
            data = log.read()
    except OSError:
        return ""
    text = data.decode(errors="replace").rstrip("\n")
    return "\n".join(text.splitlines()[-lines:])
