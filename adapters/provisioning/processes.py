"""The supervisor of the MCP server processes on this machine.

`ServerProcesses` starts each server of a pool at most once, waits until its
endpoint answers MCP, restarts it when it exits on its own, stops it on
request, and leaves a state file per server so that the next run on the same
data directory adopts what still runs instead of starting it twice. Every
start, health result, exit, restart and stop is reported to `on_event`, never
while an internal lock is held.

All methods block (a start waits for the endpoint) and may be called from
any thread that runs no event loop; from async code, use a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.adoption import (
    check_record,
    discard_record,
)
from allocation_ledger.adapters.provisioning.process_reports import (
    ProcessEvent,
    ProcessInfo,
    ServerStartError,
)
from allocation_ledger.adapters.provisioning.server_spec import ServerSpec
from allocation_ledger.adapters.provisioning.supervised import SupervisedServer
from allocation_ledger.adapters.provisioning.supervision import Key, Supervision

logger = logging.getLogger(__name__)


class ServerProcesses(Supervision):
    """Runs MCP servers as processes: one per (pool, server name), on its port.

    - `data_dir`: logs go to `<data_dir>/logs/<pool>-<name>.log`, state
      files to `<data_dir>/run/<pool>-<name>.json`.
    - `on_event(ProcessEvent)`: told of every start, health result, exit,
      restart, stop, adoption and discarded record, from the thread that
      caused it; an exception it raises is logged and ignored.
    - `catalog`: specs by server name, for `reconcile` and `adopt_or_stop`
      (which are given no spec), and to restart an adopted process.
    - `restart_policy`: how often and how soon the watcher restarts a server
      that exits on its own (default: 3 times a minute, after 0.5, 1, 2 s).
    - `now`: the clock of event times; timeouts use time.monotonic.
    - `watch_interval_seconds`: how often the watcher looks at the processes.
    - `health_timeout_seconds`: the limit of one MCP health check.

    `status()` and `info(pool, name)` tell what it knows; `log_path(pool,
    name)` where a server's output goes.
    """

    def ensure_running(
        self, pool: str, spec: ServerSpec, port: int, host: str = "127.0.0.1"
    ) -> ProcessInfo:
        """The running process of (pool, spec.name) on port; started if need be.

        Never starts a second process for the same server in the same pool,
        also when several threads ask at once, nor when an earlier run left
        it running (adopted when it answers on port, else stopped first).
        Blocks until the endpoint answers MCP (at most the spec's start
        timeout). Raises ServerStartError when the start fails (nothing is
        left running), ValueError when the server already runs on another
        port, RuntimeError after close() or inside a running event loop.
        """
        with self._telling() as events:
            return self._ensure_running(pool, spec, port, host, events)

    def stop(
        self, pool: str, name: str, grace_seconds: float = 5.0
    ) -> ProcessInfo | None:
        """Stop the server: SIGTERM to its process group, SIGKILL after grace_seconds.

        Waits until the group is gone and the port is free; the watcher does
        not restart it. Also stops the process an earlier run recorded for
        (pool, name), when still ours. Its final info; None when this
        supervisor never ran it.
        """
        with self._telling() as events:
            return self._stop(pool, name, grace_seconds, events)

    def adopt_or_stop(self, pool: str, name: str, port: int) -> ProcessInfo | None:
        """Take over the process an earlier run recorded for (pool, name), if sound.

        Adopted (and returned) when its pid is alive and really the recorded
        process (command line and start time in /proc), it was started on
        `port` and its endpoint answers MCP. Otherwise it is stopped (when
        alive and ours), its record dropped, and None returned. A server this
        supervisor already runs on `port` is returned as it is.
        """
        with self._telling() as events:
            return self._adopt_or_stop(pool, name, port, events)

    def reconcile(
        self,
        expected: Mapping[Key, int],
        host: str = "127.0.0.1",
        *,
        hosts: Mapping[str, str] | None = None,
    ) -> list[ProcessEvent]:
        """Make the running servers exactly `expected`: {(pool, name): port}.

        Each expected server is adopted (see adopt_or_stop) or started (its
        spec from the catalog, on `hosts[pool]`, else `host`); every other
        recorded or known process is stopped. A failed start shows as a
        `health_failed` event, not as an exception. Returns the events (also
        given to on_event). Raises KeyError, before doing anything, when an
        expected server has no spec.
        """
        missing = sorted(
            {name for pool, name in expected if not self._spec(pool, name)}
        )
        if missing:
            raise KeyError(f"no spec in the catalog for: {', '.join(missing)}")
        done: list[ProcessEvent] = []
        with self._telling() as events:
            unexpected: set[Key] = set()
            for path, record in self.records:
                if record is None:
                    self.records.remove_file(path)
                elif (record.pool, record.name) not in expected:
                    unexpected.add((record.pool, record.name))
            with self._lock:
                unexpected.update(
                    key
                    for key, server in self._servers.items()
                    if key not in expected and (server.pid or server.wanted)
                )
            for pool, name in sorted(unexpected):
                self._stop(pool, name, 5.0, events)
                done += self._emit(events)
            for (pool, name), port in expected.items():
                if self._adopt_or_stop(pool, name, port, events) is None:
                    spec = self._spec(pool, name)
                    assert spec is not None
                    try:
                        where = (hosts or {}).get(pool, host)
                        self._ensure_running(pool, spec, port, where, events)
                    except ServerStartError as exc:
                        logger.warning("%s", exc)
                done += self._emit(events)
        return done

    def close(self, stop_all: bool = False) -> None:
        """Stop watching and restarting; with stop_all, stop every process too.

        Without stop_all the processes keep running, and their state files
        let the next run on this data directory adopt them. Waits for a
        restart under way to finish (at most its start timeout).
        """
        super().close()
        with self._lock:
            restarting = list(self._restart_threads)
        for thread in restarting:
            thread.join()
        with self._lock:
            keys = [key for key, server in self._servers.items() if server.pid]
        if stop_all:
            for pool, name in keys:
                self.stop(pool, name)
        elif keys:
            logger.info(
                "left %d MCP server process(es) running for the next start on "
                "this data directory to adopt: %s (set "
                "ALLOCATION_LEDGER_STOP_MCP_SERVERS_ON_EXIT=true to stop them)",
                len(keys),
                ", ".join(f"{name} of pool {pool}" for pool, name in keys),
            )

    # -- starting, stopping, adopting --------------------------------------

    def _ensure_running(
        self,
        pool: str,
        spec: ServerSpec,
        port: int,
        host: str,
        events: list[ProcessEvent],
    ) -> ProcessInfo:
        self._check_open()
        key = (pool, spec.name)
        with self._keys.hold(key):
            with self._lock:
                server = self._servers.get(key)
                if server is not None and server.status == "running":
                    self._note_exit(server, events)
                if server is not None and server.pid is not None:
                    if server.port != port:
                        raise ValueError(
                            f"MCP server {spec.name!r} of pool {pool!r} already runs "
                            f"on port {server.port}, not {port}"
                        )
                    return server.info()
            adopted = self._adopt_locked(pool, spec.name, port, events, spec)
            if adopted is not None:
                return adopted
            with self._lock:
                if server is not None:
                    server.recent_restarts.clear()
            return self._start_locked(pool, spec, port, host, events)

    def _stop(
        self, pool: str, name: str, grace_seconds: float, events: list[ProcessEvent]
    ) -> ProcessInfo | None:
        key = (pool, name)
        with self._lock:
            server = self._servers.get(key)
            if server is not None:
                server.wanted = False
                server.status = "stopping" if server.pid is not None else server.status
        with self._keys.hold(key):
            if server is None:
                record = self.records.read(pool, name)
                if record is not None:
                    reason = "recorded by an earlier run"
                    events.append(
                        discard_record(self.records, record, reason, self._now)
                    )
                return None
            with self._lock:
                server.wanted = False
                pid = server.pid
            if pid is not None:
                ended, detail = server.terminate(grace_seconds, self._now)
                control.wait_port_free(server.host, server.port, 5.0)
                events.append(server.event("stopped", detail, self._now(), pid))
                with self._lock:
                    server.last_exit = ended
            self.records.remove(pool, name)
            with self._lock:
                server.status = "stopped"
                server.process = server.pid = None
                return server.info()

    def _adopt_or_stop(
        self, pool: str, name: str, port: int, events: list[ProcessEvent]
    ) -> ProcessInfo | None:
        self._check_open()
        key = (pool, name)
        with self._keys.hold(key):
            with self._lock:
                server = self._servers.get(key)
                live = server is not None and server.is_alive()
            if server is None or not live:
                spec = self._spec(pool, name)
                return self._adopt_locked(pool, name, port, events, spec)
            if server.port == port:
                with self._lock:
                    return server.info()
        self._stop(pool, name, 5.0, events)
        return None

    def _adopt_locked(
        self,
        pool: str,
        name: str,
        port: int,
        events: list[ProcessEvent],
        spec: ServerSpec | None,
    ) -> ProcessInfo | None:
        """Adopt the recorded process, or drop the record; the key lock is held."""
        record = self.records.read(pool, name)
        if record is None:
            return None
        check = check_record(record, port, self._health_timeout)
        if check.reason is not None:
            event = discard_record(
                self.records, record, check.reason, self._now, check.ours
            )
            events.append(event)
            return None
        with self._lock:
            log_path = self.log_path(pool, name)
            blank = SupervisedServer(
                pool, name, spec, port, record.host, record.endpoint, log_path
            )
            server = self._servers.setdefault((pool, name), blank)
            server.spec = spec or server.spec
            server.adopt(record)
            info = server.info()
        health = check.health
        detail = {
            "tools": list(health.tools) if health else [],
            "protocol_version": health.protocol_version if health else None,
        }
        events.append(server.event("adopted", detail, self._now()))
        return info
