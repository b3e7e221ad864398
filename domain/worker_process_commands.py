"""The Ledger's commands about worker processes, as the provisioner sees them.

`record_worker_process` saves what the provisioner saw happen to a worker's
process (a WorkerProcess event); `live_worker_ids` names the workers the
live allocations hold, which the provisioner reconciles its processes
against at start. Called by the provisioner from its own threads, never
inside another unit of work.
"""

from __future__ import annotations

import copy

from allocation_ledger.domain.actors import PROVISIONER_ACTOR
from allocation_ledger.domain.allocation_ids import worker_id
from allocation_ledger.domain.provisioning import Provisioning
from allocation_ledger.domain.unit_of_work import UnitOfWork
from allocation_ledger.domain.worker_process import (
    WorkerProcess,
    WorkerReport,
    worker_process_uuid,
)


class WorkerProcessCommands(Provisioning):
    """Worker processes: their history (a mixin of `ledger.Ledger`)."""

    def record_worker_process(
        self, report: WorkerReport, *, actor: str = PROVISIONER_ACTOR
    ) -> int | None:
        """Save what the report says happened to a worker process, at the
        ledger clock's time; answers the notification position written.

        Safe from any thread. The first report about a worker also records
        the aggregate's `Registered` event. Never changes the allocation.
        """

        def body(work: UnitOfWork) -> int | None:
            now = self.clock.now()
            found = work.get(worker_process_uuid(report.worker_id))
            if found is None:
                new = WorkerProcess.register(
                    report.pool,
                    report.allocation_id,
                    report.worker_id,
                    at=now,
                    actor=actor,
                )
                found = work.add(new)
            assert isinstance(found, WorkerProcess)
            found.record(report, at=now, actor=actor)
            return work.save()

        return self._run("record_worker_process", body)

    def worker_process(self, worker_id: str) -> WorkerProcess | None:
        """The WorkerProcess of `worker_id` as stored (a fresh read); None
        when nothing was ever reported about it."""

        def body(work: UnitOfWork) -> WorkerProcess | None:
            found = work.get(worker_process_uuid(worker_id), fresh=True)
            assert found is None or isinstance(found, WorkerProcess)
            return copy.deepcopy(found)

        return self._run("worker_process", body)

    def live_worker_ids(self) -> set[str]:
        """The ids of the workers every live allocation (pending, active or
        releasing: one the pools hold capacity for) holds, as stored now."""
        ids: set[str] = set()
        for name in self.pool_names():
            for held in self.pool(name).reservations.values():
                ports = held.worker_ports
                ids.update(worker_id(held.allocation_id, i) for i in range(len(ports)))
        return ids
