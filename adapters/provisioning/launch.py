"""One start of one process (`ProcessLaunch`, for servers and workers), and
of an MCP server (`ServerLaunch`): spawn it, then wait until its endpoint
answers MCP, watching the process meanwhile."""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.health import (
    HealthResult,
    check_endpoint_sync,
    describe_error,
)
from allocation_ledger.adapters.provisioning.process_reports import (
    EventKind,
    ExitStatus,
    ProcessEvent,
    ServerStartError,
)
from allocation_ledger.adapters.provisioning.run_records import RunRecord
from allocation_ledger.adapters.provisioning.server_spec import ServerSpec

KILL_GRACE_SECONDS = 2.0
"""How long a failed start's process has between SIGTERM and SIGKILL."""
RETRY_SECONDS = 0.1
CONNECT_PROBE_SECONDS = 0.5
CONNECTION_ERRORS = ("ConnectError", "ConnectTimeout", "RemoteProtocolError")
"""How a check starts that never reached the server's answer (httpx's names)."""


def port_taken(port: int, host: str, pool: str, ports_key: str) -> str:
    """Why a start failed on a port another program holds, and the fix: the
    pool gives the port out again until that program lets it go."""
    return (
        f"port {port} on {host} is already in use by another program (not a "
        f"process of this ledger): stop that program, or give pool {pool!r} "
        f"ports nothing else uses ({ports_key} = [FIRST, LAST] in "
        f'[pools.{pool}] of the catalog; docs/provisioning.md, "Port ranges")'
    )


class ProcessLaunch:
    """One start of `argv`, its output appended to `log_path`: the process,
    what identifies it, and (`exit`) how it ended, once it did."""

    def __init__(
        self,
        argv: tuple[str, ...],
        log_path: Path,
        now: Callable[[], datetime],
    ) -> None:
        self.argv, self.log_path, self._now = argv, log_path, now
        self.process: subprocess.Popen[bytes] | None = None
        self.start_ticks: int | None = None
        self.started_at: datetime | None = None
        self.exit: ExitStatus | None = None
        self.log_start: int | None = None
        """Where this start's lines begin in the log (None: never spawned)."""

    def spawn_with(
        self, start: Callable[[], subprocess.Popen[bytes]]
    ) -> subprocess.Popen[bytes]:
        """Note the start in the log, make the process with `start()` (which
        raises OSError when it cannot be executed); the process."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_start = control.log_size(self.log_path)
        with open(self.log_path, "a") as log:
            stamp = self._now().isoformat()
            log.write(f"--- {stamp} starting: {shlex.join(self.argv)}\n")
        process = start()
        self.process = process
        self.start_ticks = control.start_ticks(process.pid)
        self.started_at = self._now()
        return process

    def exited(self) -> ExitStatus | None:
        """How the process ended, when it has (taken down in `exit`)."""
        process = self.process
        returncode = None if process is None else process.poll()
        if returncode is None:
            return None
        self.exit = ExitStatus.from_returncode(returncode, self._now())
        return self.exit

    def abort(self, grace_seconds: float = KILL_GRACE_SECONDS) -> None:
        """End the process group if it still runs (SIGTERM, then SIGKILL after
        grace_seconds); idempotent."""
        process = self.process
        if process is not None:
            control.terminate_group(process.pid, grace_seconds, process)
            if self.exit is None:
                self.exit = ExitStatus.from_returncode(process.returncode, self._now())


class ServerLaunch(ProcessLaunch):
    """Starts `spec` for `pool` on host:port, appending its output to `log_path`.

    Call `spawn()`, then `wait_until_healthy()`. Either raises
    ServerStartError after killing what it started; `exit` then tells how the
    process ended, when it did. The events (`started`, `exited`,
    `health_passed`, `health_failed`) are appended to `events`.
    """

    def __init__(
        self,
        pool: str,
        spec: ServerSpec,
        port: int,
        host: str,
        log_path: Path,
        *,
        now: Callable[[], datetime],
        health_timeout_seconds: float,
        events: list[ProcessEvent],
    ) -> None:
        super().__init__(tuple(spec.argv(host, port)), log_path, now)
        self.pool, self.spec, self.port, self.host = pool, spec, port, host
        self.endpoint = spec.endpoint(host, port)
        self._health_timeout = health_timeout_seconds
        self._events = events
        self._began = time.monotonic()

    def spawn(self, environ: Mapping[str, str] = os.environ) -> subprocess.Popen[bytes]:
        """Start the process (spec.env over `environ`) once the port is free."""
        if not control.port_is_free(self.host, self.port):
            self._fail(port_taken(self.port, self.host, self.pool, "mcp_ports"))
        env = dict(environ) | dict(self.spec.env)
        try:
            process = self.spawn_with(
                lambda: control.spawn(self.argv, env, self.log_path)
            )
        except OSError as exc:
            self._fail(f"cannot start {self.argv[0]!r}: {exc}")
        self._began = time.monotonic()
        detail = {"argv": list(self.argv), "log": str(self.log_path)}
        self._note("started", detail)
        return process

    def record(self) -> RunRecord:
        """The state file's content for the spawned process."""
        assert self.process is not None and self.started_at is not None
        return RunRecord(
            pool=self.pool,
            name=self.spec.name,
            pid=self.process.pid,
            port=self.port,
            host=self.host,
            endpoint=self.endpoint,
            argv=self.argv,
            start_ticks=self.start_ticks,
            started_at=self.started_at.isoformat(),
        )

    def wait_until_healthy(self) -> HealthResult:
        """Wait (up to spec.start_timeout_seconds) until the endpoint answers MCP.

        Whatever goes wrong meanwhile, the process does not outlive a failure:
        an unexpected error becomes a ServerStartError too (an interrupt is
        re-raised after the kill).
        """
        try:
            return self._wait_until_healthy()
        except ServerStartError:
            raise
        except Exception as exc:  # noqa: BLE001 - it becomes the start's failure
            self._fail(f"checking its endpoint failed: {describe_error(exc)}")
        except BaseException:
            self.abort()
            raise

    def _wait_until_healthy(self) -> HealthResult:
        process = self.process
        assert process is not None, "spawn() first"
        timeout = self.spec.start_timeout_seconds
        deadline = self._began + timeout
        last_error = self._silent_port()
        while True:
            ended = self.exited()
            if ended is not None:
                self._note("exited", ended.as_detail())
                why = ended.describe()
                self._fail(f"it exited before its endpoint answered ({why})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(
                    f"its endpoint did not answer MCP within {timeout:g} s "
                    f"({last_error})"
                )
            probe = min(CONNECT_PROBE_SECONDS, remaining)
            if control.accepts_connections(self.host, self.port, probe):
                budget = min(self._health_timeout, remaining)
                health = check_endpoint_sync(self.endpoint, budget)
                if health.ok:
                    detail = {
                        "tools": list(health.tools),
                        "protocol_version": health.protocol_version,
                        "seconds": round(time.monotonic() - self._began, 3),
                    }
                    self._note("health_passed", detail)
                    return health
                last_error = self._why_not(health, budget, last_error)
            time.sleep(RETRY_SECONDS)

    def _silent_port(self) -> str:
        """Why the start failed while nothing accepted connections on the
        port: behind the stdio bridge, the bridge listens only once the
        server has answered the MCP handshake on its stdout."""
        if self.spec.transport == "stdio":
            return (
                "it did not answer the MCP handshake on its stdout, so the "
                "ledger's bridge never listened on the port"
            )
        return "nothing listens on the port"

    def _why_not(self, health: HealthResult, budget: float, before: str) -> str:
        """Why the endpoint is not healthy, after a failed check that had
        `budget` seconds: a wrong answer is named as one and is not hidden
        by a last check cut short by the start timeout."""
        error = health.error or "no answer"
        if error.startswith(CONNECTION_ERRORS):
            return f"connecting to it failed: {error}"
        if not health.timed_out:
            return f"it answered, but not as an MCP server: {error}"
        if before.startswith("it answered"):
            return before
        if budget < self._health_timeout:
            return "it accepted connections but did not answer MCP in time"
        return f"it accepted connections but gave {error}"

    def _fail(self, reason: str) -> NoReturn:
        self.abort()
        # Only this start's lines: the log keeps every earlier run's, which
        # read as if the server had come up (a failure before the spawn, such
        # as a port in use, has none).
        start = self.log_start
        tail = "" if start is None else control.log_tail(self.log_path, since=start)
        self._note("health_failed", {"reason": reason, "stderr_tail": tail})
        raise ServerStartError(self.spec.name, self.pool, reason, tail)

    def _note(self, kind: EventKind, detail: dict[str, Any]) -> None:
        pid = self.process.pid if self.process is not None else None
        event = ProcessEvent(
            kind, self.pool, self.spec.name, self.port, pid, self._now(), detail
        )
        self._events.append(event)
