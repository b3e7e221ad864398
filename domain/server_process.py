"""The ServerProcess aggregate: what happened to one MCP server's processes.

One ServerProcess per (pool, server name), its id derived from both (uuid5,
like pools), so no lookup table is needed. The Pool decides that a server
runs, on which port, and when it stops; the ServerProcess records what the
provisioner then saw happen on the machine: every start, health check,
exit, restart and stop (design contract, "Provisioning"). Its events carry
the port, the process id and the facts of each kind (`detail`: exit code or
signal, the last lines of the log, the tools the server listed), the time of
the ledger's clock and the actor `system:provisioner`.

Nothing here takes or gives back capacity: read models and the invariant
checks may ignore these events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

PROCESS_KINDS = (
    "started",
    "health_passed",
    "health_failed",
    "exited",
    "restarted",
    "failed",
    "stopped",
    "adopted",
    "discarded",
)
"""What a report may say happened (the provisioner's event kinds)."""


def server_process_uuid(pool: str, name: str) -> UUID:
    """The ServerProcess aggregate's id, derived from the pool and server name."""
    return uuid5(NAMESPACE_URL, f"allocation-ledger:server-process:{pool}:{name}")


@dataclass(frozen=True)
class ProcessReport:
    """What the provisioner saw happen to a server process, for the ledger.

    `kind`: one of PROCESS_KINDS; `port`: where the server serves; `pid`:
    the process concerned (None when none was spawned); `detail`: the kind's
    facts, JSON values only (e.g. `{"code": 3, "signal": None}` for an exit,
    `{"reason": ..., "stderr_tail": ...}` for a failed health check).
    """

    kind: str
    pool: str
    name: str
    port: int
    pid: int | None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in PROCESS_KINDS:
            msg = f"unknown process event kind {self.kind!r}"
            raise ValueError(msg)


class ServerProcess(Aggregate):
    """The processes of one MCP server of one pool, as the provisioner saw them.

    State: `status` (starting, running, exited, failed, stopped), `pid`,
    `port`, `started_at` (of the current or last process), `restarts`
    (restarts recorded), `last_exit` (the detail of the last exit or stop).
    """

    TOPIC = "allocation-ledger:server-process"

    class Event(Aggregate.Event):
        TOPIC = "allocation-ledger:server-process:event"
        actor: str

    class Registered(Event, Aggregate.Created):
        """The first report about this server of this pool."""

        TOPIC = "allocation-ledger:server-process:registered"
        pool: str
        name: str

        def apply(self, aggregate: ServerProcess) -> None:
            aggregate.pool = self.pool
            aggregate.name = self.name

    class Happened(Event):
        """What every report records: the port, the process and the facts."""

        TOPIC = "allocation-ledger:server-process:happened"
        port: int
        pid: int | None
        detail: dict[str, Any]

        status = ""

        def apply(self, aggregate: ServerProcess) -> None:
            aggregate.port = self.port
            if self.status:
                aggregate.status = self.status
            self.change(aggregate)

        def change(self, aggregate: ServerProcess) -> None:
            """What this kind changes besides port and status."""

    class Started(Happened):
        """A process was spawned (detail: argv, log)."""

        TOPIC = "allocation-ledger:server-process:started"
        status = "starting"

        def change(self, aggregate: ServerProcess) -> None:
            aggregate.pid = self.pid
            aggregate.started_at = self.timestamp

    class HealthPassed(Happened):
        """Its endpoint answered MCP (detail: tools, protocol_version, seconds)."""

        TOPIC = "allocation-ledger:server-process:health-passed"
        status = "running"

    class HealthFailed(Happened):
        """The start failed: no answer in time, or it exited first (detail:
        reason, stderr_tail)."""

        TOPIC = "allocation-ledger:server-process:health-failed"
        status = "failed"

        def change(self, aggregate: ServerProcess) -> None:
            aggregate.pid = None

    class Exited(Happened):
        """A process exited on its own (detail: code or signal)."""

        TOPIC = "allocation-ledger:server-process:exited"
        status = "exited"

        def change(self, aggregate: ServerProcess) -> None:
            aggregate.pid = None
            aggregate.last_exit = dict(self.detail)

    class Restarted(Happened):
        """It was started again after an exit (detail: restarts, backoff_seconds)."""

        TOPIC = "allocation-ledger:server-process:restarted"
        status = "running"

        def change(self, aggregate: ServerProcess) -> None:
            aggregate.restarts += 1
            if self.pid is not None:
                aggregate.pid = self.pid

    class Failed(Happened):
        """The provisioner gave up restarting it (detail: restarts, reason)."""

        TOPIC = "allocation-ledger:server-process:failed"
        status = "failed"

        def change(self, aggregate: ServerProcess) -> None:
            aggregate.pid = None

    class Stopped(Happened):
        """It was stopped on request (detail: code or signal, forced; reason)."""

        TOPIC = "allocation-ledger:server-process:stopped"
        status = "stopped"

        def change(self, aggregate: ServerProcess) -> None:
            aggregate.pid = None
            aggregate.last_exit = dict(self.detail)

    class Adopted(Happened):
        """A process an earlier run of the ledger left running was taken over
        (detail: tools, protocol_version)."""

        TOPIC = "allocation-ledger:server-process:adopted"
        status = "running"

        def change(self, aggregate: ServerProcess) -> None:
            aggregate.pid = self.pid

    class Discarded(Happened):
        """An earlier run's record of a process was dropped: the process was
        gone, not ours, or not answering (detail: reason)."""

        TOPIC = "allocation-ledger:server-process:discarded"

        def change(self, aggregate: ServerProcess) -> None:
            if aggregate.pid == self.pid:
                aggregate.pid = None
                aggregate.status = "stopped"

    def __init__(self) -> None:
        self.pool = ""
        self.name = ""
        self.port = 0
        self.pid: int | None = None
        self.status = "stopped"
        self.started_at: datetime | None = None
        self.restarts = 0
        self.last_exit: dict[str, Any] | None = None

    @classmethod
    def register(
        cls, pool: str, name: str, *, at: datetime, actor: str
    ) -> ServerProcess:
        """The aggregate of (pool, name), as its first event."""
        return cls._create(
            cls.Registered,
            id=server_process_uuid(pool, name),
            timestamp=at,
            actor=actor,
            pool=pool,
            name=name,
        )

    def record(self, report: ProcessReport, *, at: datetime, actor: str) -> None:
        """Record what the report says happened, at `at` by `actor`.

        Raises ValueError when the report is about another server.
        """
        if (report.pool, report.name) != (self.pool, self.name):
            msg = (
                f"a report about {report.name!r} of pool {report.pool!r} does not "
                f"belong to {self.name!r} of pool {self.pool!r}"
            )
            raise ValueError(msg)
        self.trigger_event(
            EVENT_CLASSES[report.kind],
            timestamp=at,
            actor=actor,
            port=report.port,
            pid=report.pid,
            detail=dict(report.detail),
        )


EVENT_CLASSES: dict[str, type[ServerProcess.Happened]] = {
    "started": ServerProcess.Started,
    "health_passed": ServerProcess.HealthPassed,
    "health_failed": ServerProcess.HealthFailed,
    "exited": ServerProcess.Exited,
    "restarted": ServerProcess.Restarted,
    "failed": ServerProcess.Failed,
    "stopped": ServerProcess.Stopped,
    "adopted": ServerProcess.Adopted,
    "discarded": ServerProcess.Discarded,
}
"""The event class that records each kind of report."""
