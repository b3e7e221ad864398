"""A release that comes after the lease ran out: the allocation is expired,
as the sweeper would have expired it, so what a job is billed for never
depends on whether the sweeper or the release came first (docs/tools.md,
release_resources). And a lease counts from activation: a pending allocation
whose provisioning outlasts its ttl is not expired meanwhile
(docs/provisioning.md, "What the slow path keeps")."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from mcp import Client

from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    resume_interrupted,
)
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.ledger_support import OpenService, RecordingProvisioner, last_position
from tests.mcp_support import call
from tests.test_server_process import GatedProvisioner, start_request
from tests.test_tenancy import TeardownLater

TTL = 60


async def held(client: Client, job_id: str) -> str:
    made = await call(
        client,
        "request_resources",
        job_id=job_id,
        mcp_servers=[],
        workers=2,
        ttl_seconds=TTL,
    )
    return str(made["allocation_id"])


async def usage_of(client: Client, job_id: str) -> dict[str, Any]:
    found = await call(client, "get_usage", job_id=job_id)
    [row] = found["usage"]
    return dict(row)


@pytest.mark.anyio
async def test_a_release_after_the_lease_ran_out_bills_what_a_sweep_bills(
    client: Client, clock: ManualClock
) -> None:
    swept = await held(client, "swept")
    released = await held(client, "released-late")
    clock.advance(250)  # the lease ended at 60 s; no sweep has run since

    answer = await call(client, "release_resources", allocation_id=released)
    await call(client, "cleanup_expired")

    assert answer["status"] == "already_released"
    assert answer["state"] == "expired"
    assert answer["duration_seconds"] is None
    assert answer["workers_released"] == 0
    assert "lease ran out at 2026-01-01T00:01:00+00:00" in answer["message"]
    assert "it is expired" in answer["message"]
    late = await usage_of(client, "released-late")
    sweep = await usage_of(client, "swept")
    assert late["worker_seconds"] == sweep["worker_seconds"] == 2 * TTL
    assert late["allocations"] == {"expired": 1}
    swept_now = await call(client, "get_allocation", allocation_id=swept)
    assert swept_now["state"] == "expired"
    shown = await call(client, "get_allocation", allocation_id=released)
    assert shown["state"] == "expired"
    history = await call(client, "get_allocation_history", allocation_id=released)
    last = history["events"][-1]
    assert (last["event"], last["actor"]) == ("expired", "system:sweeper")
    capacity = await call(client, "get_capacity")
    assert capacity["allocated_workers"] == 0
    again = await call(client, "release_resources", allocation_id=released)
    assert again["status"] == "already_released"


@pytest.mark.anyio
async def test_at_the_exact_end_of_its_lease_a_release_expires_it_as_renew_does(
    client: Client, clock: ManualClock
) -> None:
    ending = await held(client, "ends-now")
    renewing = await held(client, "renews-now")
    clock.advance(TTL)

    renewed = await client.call_tool("renew_allocation", {"allocation_id": renewing})
    released = await call(client, "release_resources", allocation_id=ending)

    assert renewed.is_error
    assert (released["status"], released["state"]) == ("already_released", "expired")


@pytest.mark.anyio
async def test_a_microsecond_before_the_end_a_release_is_a_release(
    client: Client, clock: ManualClock
) -> None:
    allocation_id = await held(client, "just-in-time")
    clock.advance(TTL - 0.000001)

    released = await call(client, "release_resources", allocation_id=allocation_id)

    assert (released["status"], released["state"]) == ("released", "released")
    assert released["workers_released"] == 2
    assert released["duration_seconds"] == pytest.approx(TTL - 0.000001)


@pytest.mark.parametrize("instant", [True, False], ids=["instant", "teardown-later"])
def test_the_ledger_expires_an_overdue_lease_and_tears_it_down_once(
    open_ledger_service: OpenService, manual_clock: ManualClock, instant: bool
) -> None:
    provisioner = RecordingProvisioner() if instant else TeardownLater()
    service: AllocationService = open_ledger_service(provisioner=provisioner)
    ledger = service.ledger
    made = ledger.request(AllocationRequest("late", workers=1, ttl_seconds=TTL))
    allocation_id = made.allocation.allocation_id
    manual_clock.advance(TTL + 5)

    outcome = ledger.release(allocation_id)
    after = last_position(ledger)

    assert outcome.result.status == "already_released"
    assert outcome.allocation.state is AllocationState.EXPIRED
    assert provisioner.deprovisioned == [allocation_id]
    assert ledger.allocation(allocation_id).state is AllocationState.EXPIRED
    assert ledger.release(allocation_id).result.status == "already_released"
    assert last_position(ledger) == after  # the second release wrote nothing
    assert provisioner.deprovisioned == [allocation_id]


# -- a lease counts from activation, however long provisioning takes -----------


def test_a_start_slower_than_the_lease_is_neither_expired_nor_released_early(
    open_ledger_service: OpenService, manual_clock: ManualClock
) -> None:
    gate = GatedProvisioner()
    service = open_ledger_service(provisioner=gate)
    ledger = service.ledger
    thread, answers, allocation_id = start_request(service, "time", ttl_seconds=TTL)
    assert gate.entered.wait(10)
    manual_clock.advance(TTL + 30)  # the server takes 90 s to answer

    swept = ledger.expire_due()
    pending = ledger.allocation(allocation_id)
    gate.go.set()
    thread.join(10)

    assert swept.expired == ()
    assert pending.state is AllocationState.PENDING
    activated = answers["result"].allocation
    assert activated.state is AllocationState.ACTIVE
    assert activated.expires_at == manual_clock.now() + timedelta(seconds=TTL)
    assert gate.stopped == []
    manual_clock.advance(TTL - 1)
    assert ledger.expire_due().expired == ()
    manual_clock.advance(1)
    assert ledger.expire_due().expired == (allocation_id,)
    assert verify(service).clean


def test_a_release_while_a_slow_start_runs_past_the_lease_is_a_release(
    open_ledger_service: OpenService, manual_clock: ManualClock
) -> None:
    gate = GatedProvisioner()
    service = open_ledger_service(provisioner=gate)
    thread, answers, allocation_id = start_request(service, "time", ttl_seconds=TTL)
    assert gate.entered.wait(10)
    manual_clock.advance(TTL + 30)

    released = service.ledger.release(allocation_id)
    gate.go.set()
    thread.join(10)

    assert (released.result.status, released.allocation.state) == (
        "released",
        AllocationState.RELEASED,
    )
    assert answers["result"].allocation.state is AllocationState.RELEASED
    assert verify(service).clean


class CountingGate(GatedProvisioner):
    """The gate, counting the provisioning calls that went through it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def provision(self, *arguments: Any, **options: Any) -> Any:
        self.calls += 1
        return super().provision(*arguments, **options)


def test_a_start_slower_than_the_provisioning_timeout_is_not_taken_for_interrupted(
    open_ledger_service: OpenService, manual_clock: ManualClock
) -> None:
    """The sweeper looked for work a crash left half done among pending
    allocations untouched for the provisioning timeout (60 s), and took a
    start still under way in this very process for one: it provisioned it a
    second time, the sweep stalled until the start ended (no lease expired
    meanwhile), and it logged an interruption that never happened."""
    gate = CountingGate()
    service = open_ledger_service(provisioner=gate)
    thread, answers, _ = start_request(service, "time", ttl_seconds=TTL)
    assert gate.entered.wait(10)
    manual_clock.advance(service.settings.provisioning_timeout_seconds + 30)
    found: dict[str, list[str]] = {}
    sweep = threading.Thread(
        target=lambda: found.setdefault("resumed", resume_interrupted(service))
    )

    sweep.start()
    sweep.join(5)
    stalled = sweep.is_alive()
    gate.go.set()
    sweep.join(10)
    thread.join(10)

    assert not stalled, "the sweep waited for a start under way in this process"
    assert found["resumed"] == []
    assert gate.calls == 1
    assert answers["result"].allocation.state is AllocationState.ACTIVE
    assert resume_interrupted(service) == []
    assert verify(service).clean
