"""The machinery under ServerProcesses: its state, starting, watching, restarting.

`Supervision` (a `Supervisor` of ProcessEvents, supervisor.py) holds what
the supervisor knows (one SupervisedServer per (pool, name), a lock per key
that serialises starts and stops, the state files), starts a server
(`_start_locked`), and runs the watcher that notices a process that exited
while it should run and restarts it with exponential backoff, within the
restart policy.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path

from allocation_ledger.adapters.provisioning.launch import ServerLaunch
from allocation_ledger.adapters.provisioning.process_reports import (
    ProcessEvent,
    ProcessInfo,
    ServerStartError,
)
from allocation_ledger.adapters.provisioning.run_records import RunRecords, file_stem
from allocation_ledger.adapters.provisioning.server_spec import (
    RestartPolicy,
    ServerSpec,
)
from allocation_ledger.adapters.provisioning.supervised import SupervisedServer
from allocation_ledger.adapters.provisioning.supervisor import (
    Supervisor,
    utc_now,
)

Key = tuple[str, str]
"""(pool, server name)"""


class Supervision(Supervisor[Key, ProcessEvent]):
    """State, starts, the watcher and restarts; see ServerProcesses for the API."""

    watcher_name = "mcp-server-watcher"
    blocking_work = "a server starts"

    def __init__(
        self,
        data_dir: Path,
        on_event: Callable[[ProcessEvent], None] | None = None,
        *,
        catalog: Mapping[str, ServerSpec] | None = None,
        restart_policy: RestartPolicy | None = None,
        now: Callable[[], datetime] = utc_now,
        watch_interval_seconds: float = 0.2,
        health_timeout_seconds: float = 5.0,
    ) -> None:
        super().__init__(
            data_dir,
            on_event,
            now=now,
            watch_interval_seconds=watch_interval_seconds,
        )
        self.records = RunRecords(self.data_dir / "run")
        self._catalog = dict(catalog or {})
        self._policy = restart_policy or RestartPolicy()
        self._health_timeout = health_timeout_seconds
        self._servers: dict[Key, SupervisedServer] = {}
        self._restart_threads: set[threading.Thread] = set()
        self._start_watching()

    def log_path(self, pool: str, name: str) -> Path:
        """Where the output of (pool, name) goes: <data_dir>/logs/<pool>-<name>.log."""
        return self.data_dir / "logs" / f"{file_stem(pool, name)}.log"

    def status(self) -> list[ProcessInfo]:
        """Every server this supervisor started or adopted, ordered by (pool, name)."""
        with self._lock:
            return [self._servers[key].info() for key in sorted(self._servers)]

    def info(self, pool: str, name: str) -> ProcessInfo | None:
        """The server's info; None when this supervisor never ran it."""
        with self._lock:
            server = self._servers.get((pool, name))
            return None if server is None else server.info()

    # -- starting ----------------------------------------------------------

    def _start_locked(
        self,
        pool: str,
        spec: ServerSpec,
        port: int,
        host: str,
        events: list[ProcessEvent],
    ) -> ProcessInfo:
        """Start the server and wait for its endpoint; the caller holds its key lock."""
        log_path = self.log_path(pool, spec.name)
        launch = ServerLaunch(
            pool,
            spec,
            port,
            host,
            log_path,
            now=self._now,
            health_timeout_seconds=self._health_timeout,
            events=events,
        )
        with self._lock:
            blank = SupervisedServer(pool, spec.name, spec, port, host, "", log_path)
            server = self._servers.setdefault((pool, spec.name), blank)
            server.begin(launch)
        try:
            launch.spawn()
            with self._lock:
                server.spawned(launch)
            self.records.write(launch.record())
            launch.wait_until_healthy()
        except BaseException:  # a failed start, or anything else: nothing stays
            launch.abort()
            self.records.remove(pool, spec.name)
            with self._lock:
                server.start_failed(launch)
            raise
        with self._lock:
            server.status = "running"
            return server.info()

    # -- watching and restarting -------------------------------------------

    def _look(self) -> None:
        events: list[ProcessEvent] = []
        restarts: list[tuple[SupervisedServer, int, float]] = []
        with self._lock:
            for server in self._servers.values():
                if server.status != "running" or not server.wanted:
                    continue
                if self._note_exit(server, events):
                    delay, failed = server.plan_restart(self._policy, self._now())
                    if delay is not None:
                        restarts.append((server, server.generation, delay))
                    if failed is not None:
                        events.append(failed)
        self._emit(events)
        for server, generation, delay in restarts:
            self._spawn_restart(server, generation, delay)

    def _note_exit(self, server: SupervisedServer, events: list[ProcessEvent]) -> bool:
        """Under the lock: whether the process exited (recorded, state file gone)."""
        exited = server.note_exit(self._now())
        if exited is None:
            return False
        events.append(exited)
        self.records.remove(server.pool, server.name)
        return True

    def _spawn_restart(
        self, server: SupervisedServer, generation: int, delay: float
    ) -> None:
        thread = threading.Thread(
            target=self._restart,
            args=(server, generation, delay),
            name=f"restart-{server.pool}-{server.name}",
            daemon=True,
        )
        with self._lock:
            self._restart_threads.add(thread)
        thread.start()

    def _restart(self, server: SupervisedServer, generation: int, delay: float) -> None:
        events: list[ProcessEvent] = []
        again: float | None = None
        try:
            if self._closing.wait(delay):
                return
            with self._keys.hold((server.pool, server.name)):
                with self._lock:
                    spec = server.spec
                    current = server.wanted and server.generation == generation
                if not current or spec is None or self._closing.is_set():
                    return
                try:
                    self._start_locked(
                        server.pool, spec, server.port, server.host, events
                    )
                except ServerStartError:
                    with self._lock:
                        server.wanted = True
                        again, failed = server.plan_restart(self._policy, self._now())
                        generation = server.generation
                    events.extend([failed] if failed is not None else [])
                    return
                detail = {"restarts": server.restarts, "backoff_seconds": delay}
                events.append(server.event("restarted", detail, self._now()))
        finally:
            self._emit(events)
            with self._lock:
                self._restart_threads.discard(threading.current_thread())
            if again is not None:
                self._spawn_restart(server, generation, again)

    # -- small parts -------------------------------------------------------

    def _spec(self, pool: str, name: str) -> ServerSpec | None:
        with self._lock:
            server = self._servers.get((pool, name))
            if server is not None and server.spec is not None:
                return server.spec
        return self._catalog.get(name)
