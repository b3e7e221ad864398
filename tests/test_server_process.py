"""The ServerProcess aggregate and the slow provisioning path, without real
processes: stable topics, what each report changes, the ledger commands that
record and correct, and what happens when an allocation ends, or provisioning
fails, while a provisioner that is not instant is at work."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import timedelta

import pytest
from eventsourcing.utils import resolve_topic

from allocation_ledger.adapters.storage.audit import server_process_history, verify
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot
from allocation_ledger.domain.results import RequestResult
from allocation_ledger.domain.server_process import (
    EVENT_CLASSES,
    ProcessReport,
    ServerProcess,
)
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.ledger_support import OpenService

TOPICS = {
    ServerProcess.Registered: "allocation-ledger:server-process:registered",
    ServerProcess.Started: "allocation-ledger:server-process:started",
    ServerProcess.HealthPassed: "allocation-ledger:server-process:health-passed",
    ServerProcess.HealthFailed: "allocation-ledger:server-process:health-failed",
    ServerProcess.Exited: "allocation-ledger:server-process:exited",
    ServerProcess.Restarted: "allocation-ledger:server-process:restarted",
    ServerProcess.Failed: "allocation-ledger:server-process:failed",
    ServerProcess.Stopped: "allocation-ledger:server-process:stopped",
    ServerProcess.Adopted: "allocation-ledger:server-process:adopted",
    ServerProcess.Discarded: "allocation-ledger:server-process:discarded",
}


@pytest.mark.parametrize(("event_class", "topic"), list(TOPICS.items()))
def test_every_server_process_event_has_a_stable_topic(
    event_class: type, topic: str
) -> None:
    assert vars(event_class).get("TOPIC") == topic
    assert resolve_topic(topic) is event_class


def test_every_report_kind_has_its_event_class() -> None:
    assert set(EVENT_CLASSES.values()) == set(TOPICS) - {ServerProcess.Registered}


class GatedProvisioner:
    """Not instant: `provision` waits until the test lets it go on (or fail)."""

    instant = False

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        self.fail: Exception | None = None
        self.deprovisioned: list[str] = []
        self.stopped: list[tuple[str, str, int]] = []

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints:
        self.entered.set()
        assert self.go.wait(10)
        if self.fail is not None:
            raise self.fail
        return Endpoints(
            {w.worker_id: f"http://h:{w.port}" for w in workers},
            {s.name: f"http://h:{s.port}/mcp" for s in servers},
        )

    def instant_endpoints(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints | None:
        """Never: every request waits for the gate."""
        return None

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> None:
        self.deprovisioned.append(allocation_id)

    def stop_server(self, name: str, port: int, *, pool: str) -> None:
        self.stopped.append((pool, name, port))


@pytest.fixture
def gate() -> GatedProvisioner:
    return GatedProvisioner()


@pytest.fixture
def service(
    open_ledger_service: OpenService, gate: GatedProvisioner
) -> AllocationService:
    return open_ledger_service(provisioner=gate)


def start_request(
    service: AllocationService, *servers: str, ttl_seconds: int = 3600
) -> tuple[threading.Thread, dict[str, RequestResult], str]:
    answers: dict[str, RequestResult] = {}
    request = AllocationRequest(job_id="j", servers=servers, ttl_seconds=ttl_seconds)

    def run() -> None:
        answers["result"] = service.ledger.request(request, request_id="r")

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers, allocation_id_for_request("default", "r")


def test_reports_are_recorded_and_change_the_process_state(
    service: AllocationService,
) -> None:
    ledger = service.ledger
    reports = [
        ProcessReport("started", "default", "time", 9000, 11, {"argv": ["t"]}),
        ProcessReport("health_passed", "default", "time", 9000, 11, {"tools": ["a"]}),
        ProcessReport(
            "exited", "default", "time", 9000, 11, {"code": None, "signal": 9}
        ),
        ProcessReport("started", "default", "time", 9000, 12, {}),
        ProcessReport("health_passed", "default", "time", 9000, 12, {}),
        ProcessReport("restarted", "default", "time", 9000, 12, {"restarts": 1}),
    ]
    for report in reports:
        assert ledger.record_server_process(report) is not None
    process = ledger.server_process("default", "time")
    assert process is not None
    assert (process.status, process.pid, process.restarts) == ("running", 12, 1)
    assert process.last_exit == {"code": None, "signal": 9}
    ledger.record_server_process(
        ProcessReport("stopped", "default", "time", 9000, 12, {"forced": False})
    )
    process = ledger.server_process("default", "time")
    assert process is not None and (process.status, process.pid) == ("stopped", None)
    history = server_process_history(service, "default", "time")
    assert [e.event for e in history][:3] == ["Registered", "Started", "HealthPassed"]
    assert {e.aggregate for e in history} == {"server-process"}
    assert {e.actor for e in history} == {"system:provisioner"}
    assert ledger.server_process("default", "other") is None
    assert verify(service).clean
    with pytest.raises(ValueError, match="unknown process event kind"):
        ProcessReport("exploded", "default", "time", 9000, None)


def test_an_unused_server_that_cannot_start_is_recorded_stopped_only_then(
    service: AllocationService, gate: GatedProvisioner
) -> None:
    gate.go.set()
    ledger = service.ledger
    kept = ledger.request(AllocationRequest(job_id="a", servers=("used", "idle")))
    ledger.release(kept.allocation.allocation_id)
    ledger.request(AllocationRequest(job_id="b", servers=("used",)))
    idle_port = ledger.pool("default").servers["idle"].port
    assert not ledger.stop_unstartable_server("default", "used", 9000)
    assert not ledger.stop_unstartable_server("default", "idle", idle_port + 1)
    assert ledger.stop_unstartable_server("default", "idle", idle_port)
    assert set(ledger.pool("default").servers) == {"used"}
    assert ("default", "idle", idle_port) in gate.stopped
    assert verify(service).clean


def test_the_pool_lease_moves_to_activation_plus_ttl(
    service: AllocationService, gate: GatedProvisioner, manual_clock: ManualClock
) -> None:
    thread, answers, allocation_id = start_request(service, "time", ttl_seconds=60)
    assert gate.entered.wait(10)
    manual_clock.advance(45)
    gate.go.set()
    thread.join(10)
    allocation = answers["result"].allocation
    assert allocation.state is AllocationState.ACTIVE
    assert allocation.expires_at == manual_clock.now() + timedelta(seconds=60)
    pool = service.ledger.pool("default")
    assert pool.reservations[allocation_id].expires_at == allocation.expires_at
    manual_clock.advance(59)
    assert service.ledger.expire_due().expired == ()
    manual_clock.advance(1)
    assert service.ledger.expire_due().expired == (allocation_id,)
    assert verify(service).clean


def test_what_a_release_interrupted_is_torn_down_when_provisioning_returns(
    service: AllocationService, gate: GatedProvisioner
) -> None:
    thread, answers, allocation_id = start_request(service, "time")
    assert gate.entered.wait(10)
    assert service.ledger.release(allocation_id).result.status == "released"
    gate.go.set()
    thread.join(10)
    assert answers["result"].allocation.state is AllocationState.RELEASED
    assert gate.deprovisioned.count(allocation_id) == 2  # the release's, and again
    assert gate.stopped == [("default", "time", 9000)]
    assert "time" not in service.ledger.pool("default").servers
    assert verify(service).clean


def test_a_failed_provisioning_gives_back_the_capacity_and_unused_servers(
    service: AllocationService, gate: GatedProvisioner
) -> None:
    gate.go.set()
    shared = service.ledger.request(AllocationRequest(job_id="a", servers=("shared",)))
    gate.fail = RuntimeError("MCP server 'fresh' did not start: exit code 2")
    failed = service.ledger.request(
        AllocationRequest(job_id="b", servers=("shared", "fresh"), workers=1)
    )
    assert failed.allocation.state is AllocationState.FAILED
    assert failed.allocation.error == "MCP server 'fresh' did not start: exit code 2"
    pool = service.ledger.pool("default")
    assert set(pool.servers) == {"shared"} and pool.servers["shared"].references == 1
    assert pool.reserved == shared.allocation.resources
    assert gate.stopped == [("default", "fresh", 9001)]
    assert failed.allocation.allocation_id in gate.deprovisioned
    assert verify(service).clean
