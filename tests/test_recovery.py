"""Provisioners that do real work run between two transactions; a crash
between them leaves an allocation pending, and the ledger finishes it."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from allocation_ledger.adapters.storage.service import (
    AllocationService,
    resume_interrupted,
)
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.ledger_support import OpenService


class Interrupted(BaseException):
    """Stands for the process dying in the middle of provisioning."""


class SlowProvisioner:
    """Does its work outside the ledger's transactions (not `instant`)."""

    def __init__(self) -> None:
        self.crash_next = False
        self.provisioned: list[str] = []
        self.deprovisioned: list[str] = []

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints:
        if self.crash_next:
            self.crash_next = False
            raise Interrupted
        self.provisioned.append(allocation_id)
        return Endpoints(
            {w.worker_id: f"http://node-1:{w.port}" for w in workers},
            {s.name: f"http://node-1:{s.port}" for s in servers},
        )

    def instant_endpoints(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints | None:
        """Never: its work is outside the ledger's transactions."""
        return None

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> None:
        if self.crash_next:
            self.crash_next = False
            raise Interrupted
        self.deprovisioned.append(allocation_id)

    def stop_server(self, name: str, port: int, *, pool: str) -> None:
        return None


@pytest.fixture
def provisioner() -> SlowProvisioner:
    return SlowProvisioner()


@pytest.fixture
def service(
    open_ledger_service: OpenService, provisioner: SlowProvisioner
) -> AllocationService:
    return open_ledger_service(provisioner=provisioner)


def test_a_request_is_reserved_then_provisioned_in_two_steps(
    service: AllocationService, provisioner: SlowProvisioner
) -> None:
    result = service.ledger.request(AllocationRequest("job", ("github",), 2))
    assert result.allocation.state is AllocationState.ACTIVE
    assert result.allocation.endpoints.servers == {"github": "http://node-1:9000"}
    history = service.ledger.repository.event_store.get(result.allocation.id)
    assert [type(e).__name__ for e in history] == ["Requested", "Activated"]


def test_a_retry_takes_up_a_request_whose_provisioning_was_interrupted(
    service: AllocationService, provisioner: SlowProvisioner
) -> None:
    request = AllocationRequest("job", ("github",), 2)
    provisioner.crash_next = True
    with pytest.raises(Interrupted):
        service.ledger.request(request, request_id="r-1")
    interrupted = service.read_models.allocations()[0]
    assert interrupted.state == "pending"
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.reserved.workers == 2  # held while provisioning

    retried = service.ledger.request(request, request_id="r-1")
    assert retried.replayed
    assert retried.allocation.state is AllocationState.ACTIVE
    assert retried.allocation.allocation_id == interrupted.allocation_id
    assert provisioner.provisioned == [interrupted.allocation_id]


def test_the_sweeper_finishes_what_a_crash_left_half_done(
    service: AllocationService, provisioner: SlowProvisioner, manual_clock: ManualClock
) -> None:
    kept = service.ledger.request(AllocationRequest("job-a", (), 1))
    provisioner.crash_next = True
    with pytest.raises(Interrupted):
        service.ledger.request(AllocationRequest("job-b", (), 2))
    provisioner.crash_next = True
    with pytest.raises(Interrupted):
        service.ledger.release(kept.allocation.allocation_id)
    states = {v.job_id: v.state for v in service.read_models.allocations()}
    assert states == {"job-a": "releasing", "job-b": "pending"}

    assert resume_interrupted(service) == []  # too recent: maybe still under way
    manual_clock.advance(service.settings.provisioning_timeout_seconds)
    assert len(resume_interrupted(service)) == 2
    states = {v.job_id: v.state for v in service.read_models.allocations()}
    assert states == {"job-a": "released", "job-b": "active"}
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.reserved.workers == 2
    assert resume_interrupted(service) == []
