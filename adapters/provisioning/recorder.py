"""The ledger a process provisioner records in and consults.

`LedgerRecorder` holds the ledger given to `ProcessProvisioner.connect`,
turns what the supervisors report (ProcessEvent for MCP servers,
WorkerEvent for workers) into the ledger's ServerProcess and WorkerProcess
records, and answers the one question the provisioner asks the ledger
before a stop: on which port its pool records a server now. Before
`connect`, events are logged, not recorded.
"""

from __future__ import annotations

import logging

from allocation_ledger.adapters.provisioning.process_reports import ProcessEvent
from allocation_ledger.adapters.provisioning.worker_reports import WorkerEvent
from allocation_ledger.domain.errors import PoolNotFoundError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.server_process import ProcessReport
from allocation_ledger.domain.worker_process import WorkerReport

logger = logging.getLogger(__name__)


class LedgerRecorder:
    """The connected ledger (None until `connect`), and what is recorded in it."""

    def __init__(self) -> None:
        self.ledger: Ledger | None = None

    def connect(self, ledger: Ledger) -> None:
        """Record every event in `ledger` from now on."""
        self.ledger = ledger

    def require(self) -> Ledger:
        """The connected ledger; RuntimeError before `connect`."""
        if self.ledger is None:
            raise RuntimeError("ProcessProvisioner.connect(ledger) was not called")
        return self.ledger

    def server_event(self, event: ProcessEvent) -> None:
        """The server supervisor's on_event: record the event in the ledger."""
        self.report(
            ProcessReport(
                event.kind,
                event.pool,
                event.name,
                event.port,
                event.pid,
                dict(event.detail),
            )
        )

    def worker_event(self, event: WorkerEvent) -> None:
        """The worker supervisor's on_event: record the event in the ledger."""
        report = WorkerReport(
            event.kind,
            event.pool,
            event.allocation_id,
            event.worker_id,
            event.pid,
            dict(event.detail),
        )
        if self.ledger is None:
            logger.info("not recorded (no ledger connected): %s", report)
            return
        self.ledger.record_worker_process(report)

    def report(self, report: ProcessReport) -> None:
        """Record a ServerProcess report (logged when no ledger is connected)."""
        if self.ledger is None:
            logger.info("not recorded (no ledger connected): %s", report)
            return
        self.ledger.record_server_process(report)

    def recorded_port(self, pool: str, name: str) -> int | None:
        """The port the pool records the server on now (fresh), or None
        (also before `connect`)."""
        if self.ledger is None:
            return None
        try:
            server = self.ledger.pool(pool).servers.get(name)
        except PoolNotFoundError:
            return None
        return None if server is None else server.port
