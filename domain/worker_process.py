"""The WorkerProcess aggregate: what happened to one worker's process.

Where a pool has a `worker_command`, each worker an allocation reserves runs
as a process on this machine. The Allocation decides that the worker exists
and when it ends; the WorkerProcess records what the provisioner then saw
happen to its process: its start (with the limits in force), its
readiness (what its allocation waited for before it turned active), its exit and
why (`cause`: exited, signal, memory_limit, unknown), a stop on request, an
adoption after a restart of the ledger.

Why an aggregate of its own, one per worker id (its id derived from the
worker id, uuid5), rather than events on the Allocation: a worker's death is
a fact the agent can see, never a change of the allocation's state, and the
Allocation's events are what its state machine and read models fold. Events
here are recorded from the supervisor's threads, while an allocation may be
changed by a request at the same moment: a separate aggregate never makes a
release retry because a worker exited, and never bumps the allocation's
version. The events carry the allocation id, so `history` relates them.

Nothing here takes or gives back capacity: read models and the invariant
checks may ignore these events (like ServerProcess events).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate

WORKER_KINDS = ("started", "ready", "exited", "stopped", "adopted")
"""What a report may say happened (the worker supervisor's event kinds)."""


def worker_process_uuid(worker_id: str) -> UUID:
    """The WorkerProcess aggregate's id, derived from the worker id."""
    return uuid5(NAMESPACE_URL, f"allocation-ledger:worker-process:{worker_id}")


@dataclass(frozen=True)
class WorkerReport:
    """What the provisioner saw happen to a worker process, for the ledger.

    `kind`: one of WORKER_KINDS; `pid`: the process concerned; `detail`: the
    kind's facts, JSON values only (`argv`, `log`, `limits` for a start;
    `check`, `seconds`, `port` for readiness; `code`, `signal`, `cause`,
    `oom_kills`, `evidence`, `log_tail` for an exit; `code`, `signal`,
    `forced`, `reason` for a stop).
    """

    kind: str
    pool: str
    allocation_id: str
    worker_id: str
    pid: int | None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in WORKER_KINDS:
            msg = f"unknown worker event kind {self.kind!r}"
            raise ValueError(msg)


class WorkerProcess(Aggregate):
    """The process of one worker, as the provisioner saw it.

    State: `status` (running, exited, stopped), `pid`, `started_at`,
    `ready_at` (when its process last passed its readiness check; None
    before, and in histories recorded before readiness checks existed),
    `cause` (why it ended: exited, signal, memory_limit, stopped, unknown),
    `last_exit` (the detail of its exit or stop), `limits` (in force).
    """

    TOPIC = "allocation-ledger:worker-process"
    ready_at: datetime | None = None  # also for snapshots older than Ready

    class Event(Aggregate.Event):
        TOPIC = "allocation-ledger:worker-process:event"
        actor: str

    class Registered(Event, Aggregate.Created):
        """The first report about this worker."""

        TOPIC = "allocation-ledger:worker-process:registered"
        pool: str
        allocation_id: str
        worker_id: str

        def apply(self, aggregate: WorkerProcess) -> None:
            aggregate.pool = self.pool
            aggregate.allocation_id = self.allocation_id
            aggregate.worker_id = self.worker_id

    class Happened(Event):
        """What every report records: the process and the facts."""

        TOPIC = "allocation-ledger:worker-process:happened"
        pid: int | None
        detail: dict[str, Any]

        def apply(self, aggregate: WorkerProcess) -> None:
            self.change(aggregate)

        def change(self, aggregate: WorkerProcess) -> None:
            """What this kind changes."""

    class Started(Happened):
        """Its process was spawned, in its limits (detail: argv, log, limits)."""

        TOPIC = "allocation-ledger:worker-process:started"

        def change(self, aggregate: WorkerProcess) -> None:
            aggregate.status = "running"
            aggregate.pid = self.pid
            aggregate.started_at = self.timestamp
            aggregate.ready_at = None
            aggregate.cause = None
            aggregate.last_exit = None
            aggregate.limits = dict(self.detail.get("limits") or {})

    class Ready(Happened):
        """Its process passed its readiness check: it accepted a connection
        on its port, or kept running for the settle time (detail: check,
        seconds since its start was checked, port)."""

        TOPIC = "allocation-ledger:worker-process:ready"

        def change(self, aggregate: WorkerProcess) -> None:
            aggregate.ready_at = self.timestamp

    class Exited(Happened):
        """It ended by itself or was killed (detail: code, signal, cause,
        oom_kills, evidence, log_tail)."""

        TOPIC = "allocation-ledger:worker-process:exited"

        def change(self, aggregate: WorkerProcess) -> None:
            aggregate.status = "exited"
            aggregate.cause = str(self.detail.get("cause") or "unknown")
            aggregate.last_exit = dict(self.detail)

    class Stopped(Happened):
        """It was stopped on request (detail: code, signal, forced, reason)."""

        TOPIC = "allocation-ledger:worker-process:stopped"

        def change(self, aggregate: WorkerProcess) -> None:
            aggregate.status = "stopped"
            aggregate.cause = "stopped"
            aggregate.last_exit = dict(self.detail)

    class Adopted(Happened):
        """A process an earlier run of the ledger left running was taken over
        (detail: limits)."""

        TOPIC = "allocation-ledger:worker-process:adopted"

        def change(self, aggregate: WorkerProcess) -> None:
            aggregate.status = "running"
            aggregate.pid = self.pid

    def __init__(self) -> None:
        self.pool = ""
        self.allocation_id = ""
        self.worker_id = ""
        self.status = "running"
        self.pid: int | None = None
        self.started_at: datetime | None = None
        self.ready_at = None
        self.cause: str | None = None
        self.last_exit: dict[str, Any] | None = None
        self.limits: dict[str, Any] = {}

    @classmethod
    def register(
        cls,
        pool: str,
        allocation_id: str,
        worker_id: str,
        *,
        at: datetime,
        actor: str,
    ) -> WorkerProcess:
        """The aggregate of `worker_id`, as its first event."""
        return cls._create(
            cls.Registered,
            id=worker_process_uuid(worker_id),
            timestamp=at,
            actor=actor,
            pool=pool,
            allocation_id=allocation_id,
            worker_id=worker_id,
        )

    def record(self, report: WorkerReport, *, at: datetime, actor: str) -> None:
        """Record what the report says happened, at `at` by `actor`.

        Raises ValueError when the report is about another worker.
        """
        if report.worker_id != self.worker_id:
            msg = (
                f"a report about worker {report.worker_id!r} does not belong to "
                f"worker {self.worker_id!r}"
            )
            raise ValueError(msg)
        self.trigger_event(
            WORKER_EVENT_CLASSES[report.kind],
            timestamp=at,
            actor=actor,
            pid=report.pid,
            detail=dict(report.detail),
        )


WORKER_EVENT_CLASSES: dict[str, type[WorkerProcess.Happened]] = {
    "started": WorkerProcess.Started,
    "ready": WorkerProcess.Ready,
    "exited": WorkerProcess.Exited,
    "stopped": WorkerProcess.Stopped,
    "adopted": WorkerProcess.Adopted,
}
"""The event class that records each kind of report."""
