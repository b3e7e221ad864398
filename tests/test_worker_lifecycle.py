"""How workers end, with real processes: at expiry and at preemption (SIGTERM,
the grace period, SIGKILL for one that ignores it), released while their
allocation's provisioning is still under way, when the second worker of an
allocation cannot start, and the port of a worker that is being stopped
never handed to a new worker while the old process still holds it.

Workers inherit the test's mark from the ledger's environment, so every
process a test starts is killed when it ends (tests/process_support.py)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from allocation_ledger.adapters.mcp.schemas.refusals import failure_reason
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest, AllocationState, Priority
from tests.process_support import (
    MARK,
    POOL,
    POOL_WORKER_FIRST,
    TEST_SERVER,
    facts_on,
    is_alive,
    kinds,
    marked_processes,
    marking,
    process_ledgers,
    refuses_connections,
    request_in_thread,
    wait_until,
    worker_events,
)

PROGRAM = str(Path(__file__).with_name("worker_program.py"))
WORKER = [
    sys.executable,
    PROGRAM,
    "--port",
    "{port}",
    "--worker-id",
    "{worker_id}",
    "--allocation-id",
    "{allocation_id}",
]
STUBBORN = [*WORKER, "--ignore-term"]
"""Serves, and ignores SIGTERM: only the SIGKILL after the grace period ends it."""
SLOW_SERVER = {"command": [*TEST_SERVER, "--delay-seconds", "2"]}
OpenLedger = Callable[..., AllocationService]


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's mark, in the environment the workers inherit."""
    for value in marking(tmp_path):
        monkeypatch.setenv(MARK, value)
        yield value


@pytest.fixture
def open_ledger(
    mark: str, tmp_path: Path, manual_clock: ManualClock
) -> Iterator[OpenLedger]:
    """Opens a ledger whose catalog names `servers` and gives POOL `pool`'s
    keys; its processes are stopped at the end."""
    with process_ledgers(mark, tmp_path, manual_clock) as open_:
        yield lambda pool, servers=None: open_(servers or {}, pool)


def provisioner_of(service: AllocationService) -> ProcessProvisioner:
    provisioner = service.ledger.provisioner
    assert isinstance(provisioner, ProcessProvisioner)
    return provisioner


def granted(service: AllocationService, **request: Any) -> Allocation:
    pool = request.pop("pool", POOL)
    result = service.ledger.request(AllocationRequest(**request), pool=pool)
    allocation = result.allocation
    assert allocation.state is AllocationState.ACTIVE, allocation.error
    return allocation


def running_pid(service: AllocationService, worker_id: str) -> int:
    info = provisioner_of(service).worker_info(worker_id)
    assert info is not None and info.status == "running", info
    return info.pid


# -- expiry and preemption -----------------------------------------------------


@pytest.mark.parametrize(
    ("command", "forced", "ended_by"),
    [(WORKER, False, signal.SIGTERM), (STUBBORN, True, signal.SIGKILL)],
    ids=["exits-at-sigterm", "ignores-sigterm"],
)
def test_a_worker_is_stopped_when_its_allocation_expires(
    open_ledger: OpenLedger,
    manual_clock: ManualClock,
    command: list[str],
    forced: bool,
    ended_by: int,
) -> None:
    service = open_ledger({"worker_command": command})
    allocation = granted(service, job_id="leased", workers=1, ttl_seconds=60)
    [slot] = allocation.workers
    pid = running_pid(service, slot.worker_id)
    assert wait_until(lambda: facts_on(slot.port) is not None, 15)

    manual_clock.advance(61)
    swept = service.ledger.expire_due()  # what the sweeper runs
    assert swept.expired == (allocation.allocation_id,)

    assert not is_alive(pid)  # the sweep returns once the worker is gone
    assert refuses_connections(slot.port)
    events = worker_events(service, slot.worker_id)
    assert kinds(events) == ["Registered", "Started", "Ready", "Stopped"]
    stopped = events[-1]
    assert stopped.pid == pid
    assert stopped.detail["forced"] is forced
    assert stopped.detail["signal"] == ended_by
    record = service.ledger.worker_process(slot.worker_id)
    assert record is not None and record.status == "stopped"
    assert record.cause == "stopped"
    assert verify(service).clean


def test_a_preempted_allocations_worker_is_stopped_and_its_port_goes_to_the_new_one(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({"worker_command": STUBBORN, "workers": 1})
    victim = granted(service, job_id="batch", workers=1, priority=Priority.LOW)
    [old] = victim.workers
    old_pid = running_pid(service, old.worker_id)
    assert wait_until(lambda: facts_on(old.port) is not None, 15)

    urgent = granted(service, job_id="urgent", workers=1, priority=Priority.CRITICAL)
    [new] = urgent.workers
    assert new.port == old.port  # the only worker slot, the lowest free port
    assert service.ledger.allocation(victim.allocation_id).state is (
        AllocationState.PREEMPTED
    )
    assert not is_alive(old_pid)
    stopped = worker_events(service, old.worker_id)
    assert kinds(stopped) == ["Registered", "Started", "Ready", "Stopped"]
    assert stopped[-1].detail["forced"] is True  # it ignored SIGTERM
    # The new worker was started only once the old one was gone: it holds
    # the port now, and answers there.
    assert wait_until(lambda: facts_on(new.port) is not None, 15)
    facts = facts_on(new.port)
    assert facts is not None
    assert facts["env"]["LEDGER_WORKER_ID"] == new.worker_id
    assert facts["pid"] == running_pid(service, new.worker_id)
    assert verify(service).clean


# -- releases that race provisioning, and ports still held --------------------


def test_a_release_while_workers_are_provisioned_leaves_no_worker_behind(
    open_ledger: OpenLedger, mark: str
) -> None:
    slow_worker = [*WORKER, "--delay-seconds", "3"]  # listens 3 s after its start
    service = open_ledger({"worker_command": slow_worker}, {"slow": SLOW_SERVER})
    request = AllocationRequest(job_id="slow", servers=("slow",), workers=2)
    thread, answers, allocation_id = request_in_thread(service, request)
    assert wait_until(lambda: marked_processes(mark) != [])  # the server starts
    assert service.ledger.allocation(allocation_id).state is AllocationState.PENDING
    assert service.ledger.release(allocation_id).result.status == "released"
    thread.join(60)
    assert answers["result"].allocation.state is AllocationState.RELEASED
    assert wait_until(lambda: marked_processes(mark) == [], 15)
    workers = service.ledger.allocation(allocation_id).workers
    for slot in workers:
        assert refuses_connections(slot.port)
        events = kinds(worker_events(service, slot.worker_id))
        assert events in ([], ["Registered", "Started", "Stopped"]), events
    # Its ports are free again, and a new allocation's worker serves on them.
    again = granted(service, job_id="next", workers=1)
    [slot] = again.workers
    assert slot.port == POOL_WORKER_FIRST
    assert wait_until(lambda: facts_on(slot.port) is not None, 20)
    assert verify(service).clean


def test_a_releasing_allocation_keeps_its_worker_port_until_the_worker_is_gone(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({"worker_command": STUBBORN})
    first = granted(service, job_id="first", workers=1)
    [old] = first.workers
    old_pid = running_pid(service, old.worker_id)
    # Once it listens it ignores SIGTERM (a SIGTERM before that, while its
    # Python starts, would end it at once).
    assert wait_until(lambda: facts_on(old.port) is not None, 15)
    # Its worker ignores SIGTERM: the release waits out the grace period, and
    # the allocation is `releasing`, holding its port, until it is gone.
    releasing = threading.Thread(
        target=lambda: service.ledger.release(first.allocation_id)
    )
    releasing.start()
    try:
        assert wait_until(
            lambda: (
                service.ledger.allocation(first.allocation_id).state
                is AllocationState.RELEASING
            )
        )
        assert is_alive(old_pid)
        second = granted(service, job_id="second", workers=1)
        [new] = second.workers
        assert new.port != old.port
    finally:
        releasing.join(30)
    assert not is_alive(old_pid)
    assert service.ledger.allocation(first.allocation_id).state is (
        AllocationState.RELEASED
    )
    assert old.port not in service.ledger.pool(POOL).worker_ports
    assert verify(service).clean


def test_an_expired_workers_port_is_not_handed_out_while_its_process_holds_it(
    open_ledger: OpenLedger, manual_clock: ManualClock
) -> None:
    service = open_ledger({"worker_command": STUBBORN})
    first = granted(service, job_id="first", workers=1, ttl_seconds=60)
    [old] = first.workers
    old_pid = running_pid(service, old.worker_id)
    assert wait_until(lambda: facts_on(old.port) is not None, 15)

    # The expiry frees the port in the pool at once (expired is final); its
    # worker ignores SIGTERM, so its process holds the port through the
    # grace period while the sweep waits.
    manual_clock.advance(61)
    sweeping = threading.Thread(target=service.ledger.expire_due)
    sweeping.start()
    try:
        assert wait_until(
            lambda: (
                service.ledger.allocation(first.allocation_id).state
                is AllocationState.EXPIRED
            )
        )
        assert is_alive(old_pid)  # still in its grace period
        second = granted(service, job_id="second", workers=1)
    finally:
        sweeping.join(30)
    [new] = second.workers
    assert new.port == old.port  # the lowest free port again
    assert not is_alive(old_pid)
    assert wait_until(lambda: facts_on(new.port) is not None, 15)
    facts = facts_on(new.port)
    assert facts is not None and facts["env"]["LEDGER_WORKER_ID"] == new.worker_id
    record = service.ledger.worker_process(new.worker_id)
    assert record is not None and record.status == "running", record
    # The old process was gone before the new one started.
    stopped = worker_events(service, old.worker_id)[-1]
    started = worker_events(service, new.worker_id)[1]
    assert type(stopped).__name__ == "Stopped"
    assert stopped.timestamp <= started.timestamp
    assert verify(service).clean


def test_an_allocation_whose_second_worker_cannot_start_fails_and_holds_nothing(
    open_ledger: OpenLedger, tmp_path: Path, mark: str
) -> None:
    # The command is a program named after the worker's port, and only the
    # first port's program exists: the second worker cannot start.
    programs = tmp_path / "bin"
    programs.mkdir()
    first = programs / f"agent-{POOL_WORKER_FIRST}"
    first.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{PROGRAM}" "$@"\n')
    first.chmod(0o755)
    command = [str(programs / "agent-{port}"), *WORKER[2:]]
    service = open_ledger({"worker_command": command})
    before = service.ledger.pool(POOL)

    result = service.ledger.request(
        AllocationRequest(job_id="pair", workers=2), pool=POOL
    )
    allocation = result.allocation
    assert allocation.state is AllocationState.FAILED
    reason = failure_reason(allocation.rejection, failed=True, error=allocation.error)
    assert reason is not None and reason.code == "provisioning_failed"
    [one, two] = allocation.workers
    assert two.worker_id in (allocation.error or "")
    assert "did not start" in (allocation.error or "")
    # The first worker was started, then stopped; the second never ran.
    assert kinds(worker_events(service, one.worker_id)) == [
        "Registered",
        "Started",
        "Stopped",
    ]
    started = worker_events(service, one.worker_id)[1]
    assert not is_alive(started.pid)
    assert refuses_connections(one.port)
    after = service.ledger.pool(POOL)
    assert after.reservations == before.reservations
    assert after.worker_ports == before.worker_ports == set()
    assert after.reserved == before.reserved
    assert marked_processes(mark) == []
    assert os.listdir(tmp_path / "data" / "run" / "workers") == []
    assert verify(service).clean
