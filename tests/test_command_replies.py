"""What commands answer is what they saved, and how long they wait.

A pool command answers the pool as saved (saving serves the queue, which may
change it), and the capacity view built from that pool is the read model's;
a command that finds the ledger held by others past its wait gives up,
having written nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.domain.errors import LedgerBusyError
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Priority,
    QueuePolicy,
    Resources,
)
from allocation_ledger.projections.aggregate_views import capacity_view_of
from tests.ledger_support import OpenService, last_position
from tests.test_server_process import GatedProvisioner


def test_the_capacity_view_of_a_pool_is_its_read_model(
    open_ledger_service: OpenService,
) -> None:
    service = open_ledger_service()
    ledger = service.ledger
    held = ledger.request(AllocationRequest("a", ("github",), 3), tenant="t1")
    ledger.request(AllocationRequest("b", ("fs",), 6), tenant="t2")
    ledger.request(AllocationRequest("c", ("fs",), 4), tenant="t2", wait=True)
    ledger.request(
        AllocationRequest("d", (), 1, priority=Priority.LOW),
        tenant="t1",
        wait=True,
        max_wait_seconds=600,
    )
    ledger.set_quota("t1", Resources(8000, 16384, 5))
    ledger.configure_scheduling(
        Scheduling(queue_policy=QueuePolicy.STRICT, aging_seconds=120, preemption={})
    )
    ledger.release(held.allocation.allocation_id)  # github goes idle

    read = service.read_models.capacity("default")
    assert read is not None
    assert read.queue, "the scenario leaves requests waiting"
    assert read.servers["github"].idle_since is not None
    assert dataclasses.asdict(capacity_view_of(ledger.pool("default"))) == (
        dataclasses.asdict(read)
    )


def test_a_pool_command_answers_the_pool_as_saved_with_its_queue_served(
    open_ledger_service: OpenService,
) -> None:
    ledger = open_ledger_service().ledger
    ledger.request(AllocationRequest("holder", (), 8))
    ledger.request(AllocationRequest("big", (), 4), wait=True)
    small = ledger.request(AllocationRequest("small", (), 1), wait=True)
    assert small.allocation.state is AllocationState.QUEUED  # strict: behind big

    result = ledger.configure_scheduling(Scheduling(queue_policy=QueuePolicy.BACKFILL))

    # Saving served the queue: the small one went by, and the answer says so.
    assert small.allocation.allocation_id not in result.pool.queue
    assert small.allocation.allocation_id in result.pool.reservations
    assert capacity_view_of(result.pool) == capacity_view_of(ledger.pool("default"))

    raised = ledger.set_capacity(Resources(16000, 32768, 14))
    assert raised.pool.queue == {}  # big granted by the same save
    assert raised.pool.reserved.workers == 13


class GatedInstantProvisioner(GatedProvisioner):
    """Provisions inside the command's transaction, once let go: it holds
    the ledger meanwhile."""

    instant = True

    def instant_endpoints(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints | None:
        return self.provision(allocation_id, workers, servers, pool=pool)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_a_command_that_waits_too_long_for_the_ledger_gives_up_having_written_nothing(
    open_services: OpenService, tmp_path: Path, store: str
) -> None:
    gate = GatedInstantProvisioner()
    settings = (
        Settings(store="memory", store_timeout_seconds=0.2)
        if store == "memory"
        else Settings(
            store="sqlite",
            database=tmp_path / "ledger.db",
            store_timeout_seconds=0.2,
        )
    )
    service = open_services(settings, provisioner=gate)
    ledger = service.ledger
    first = threading.Thread(
        target=ledger.request, args=(AllocationRequest("first", (), 1),)
    )
    first.start()
    try:
        assert gate.entered.wait(10)
        before = last_position(ledger)
        with pytest.raises(LedgerBusyError) as busy:
            ledger.request(AllocationRequest("second", (), 1))
        assert busy.value.command == "request_resources"
        assert busy.value.waited_seconds == pytest.approx(0.2)
        assert last_position(ledger) == before
    finally:
        gate.go.set()
        first.join(10)
    assert ledger.pool("default").reserved.workers == 1
