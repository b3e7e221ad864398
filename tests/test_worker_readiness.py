"""Workers are checked for readiness, as MCP servers are, with real processes
and the ledger's real clock: an allocation stays `pending` until each of its
workers is ready (it listens on its port when its command uses `{port}`,
else it keeps running for the settle time), and fails with
`provisioning_failed` (naming the worker, quoting its output, or saying the
command was not found) when a worker exits first or is not ready within the
pool's `worker_start_timeout_seconds`; everything it reserved is given back
and no process is left. A release during a slow start leaves no process.

Workers inherit the test's mark from the ledger's environment, so every
process a test starts is killed when it ends (tests/process_support.py)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from mcp import Client

from allocation_ledger.adapters.mcp.schemas.refusals import failure_reason
from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.mcp_support import call
from tests.process_support import (
    MARK,
    POOL,
    POOL_WORKER_FIRST,
    TEST_SERVER,
    facts_on,
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
SAYS = "crashing on purpose"
CRASH = [
    sys.executable,
    "-c",
    f"import sys; print({SAYS!r}, file=sys.stderr, flush=True); sys.exit(1)",
]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
"""Runs and never listens: ready by `running` only."""
START_TIMEOUT_SECONDS = 30
OpenLedger = Callable[..., AllocationService]


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's mark, in the environment the workers inherit."""
    for value in marking(tmp_path):
        monkeypatch.setenv(MARK, value)
        yield value


@pytest.fixture
def open_ledger(mark: str, tmp_path: Path) -> Iterator[OpenLedger]:
    """Opens a ledger on the wall clock whose POOL has `pool`'s keys (and a
    start timeout of 30 s unless given) and whose catalog names `servers`;
    its processes are stopped at the end."""

    def open_(
        pool: dict[str, Any], servers: dict[str, Any] | None = None
    ) -> AllocationService:
        keys = {"worker_start_timeout_seconds": START_TIMEOUT_SECONDS, **pool}
        return opened(servers or {}, keys)

    with process_ledgers(mark, tmp_path, None) as opened:
        yield open_


def held(service: AllocationService) -> tuple[Any, ...]:
    """What the pool holds: reservations, reserved amounts, worker ports."""
    pool = service.ledger.pool(POOL)
    return dict(pool.reservations), pool.reserved, set(pool.worker_ports)


def assert_failed_and_nothing_held(
    service: AllocationService,
    allocation: Allocation,
    before: tuple[Any, ...],
    tmp_path: Path,
    mark: str,
) -> str:
    """The allocation failed with provisioning_failed, gave everything back
    and left no process; its error."""
    assert allocation.state is AllocationState.FAILED
    reason = failure_reason(allocation.rejection, failed=True, error=allocation.error)
    assert reason is not None and reason.code == "provisioning_failed"
    assert held(service) == before
    assert wait_until(lambda: marked_processes(mark) == [], 10)
    records = tmp_path / "data" / "run" / "workers"
    assert not records.exists() or os.listdir(records) == []
    for slot in allocation.workers:
        assert refuses_connections(slot.port)
    assert verify(service).clean
    return allocation.error or ""


# -- failed starts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["false"], "it exited before it was ready (exit code 1)"),
        (CRASH, SAYS),
        ([*WORKER[:2], "--mode", "exit", "--exit-code", "3", *WORKER[2:]], "code 3"),
    ],
    ids=["false", "stderr-and-exit-1", "uses-port-and-exits"],
)
def test_a_worker_that_exits_at_once_fails_its_allocation_with_its_output(
    open_ledger: OpenLedger,
    tmp_path: Path,
    mark: str,
    command: list[str],
    says: str,
) -> None:
    service = open_ledger({"worker_command": command})
    before = held(service)

    result = service.ledger.request(
        AllocationRequest(job_id="crash", workers=2), pool=POOL
    )

    allocation = service.ledger.allocation(result.allocation.allocation_id)
    error = assert_failed_and_nothing_held(service, allocation, before, tmp_path, mark)
    names = [slot.worker_id for slot in allocation.workers]
    assert any(f"worker {name!r} did not start" in error for name in names), error
    assert "it exited before it was ready" in error
    assert says in error
    assert "within" not in error  # noticed at once, not at the timeout
    assert allocation.requested_at is not None and allocation.ended_at is not None
    waited = allocation.ended_at - allocation.requested_at
    assert waited < timedelta(seconds=START_TIMEOUT_SECONDS), waited
    # each worker was started; each ended (by itself, or stopped with the
    # allocation), and none was ever ready
    for name in names:
        events = kinds(worker_events(service, name))
        assert events[:2] == ["Registered", "Started"], events
        assert events[-1] in ("Exited", "Stopped"), events
        assert "Ready" not in events
    exits = [
        event
        for name in names
        for event in worker_events(service, name)
        if type(event).__name__ == "Exited"
    ]
    assert exits and all(e.detail["cause"] == "exited" for e in exits)


def test_a_failed_worker_gives_back_the_servers_only_its_allocation_used(
    open_ledger: OpenLedger, mark: str
) -> None:
    servers = {"shared": {"command": TEST_SERVER}, "own": {"command": TEST_SERVER}}
    service = open_ledger({"worker_command": CRASH}, servers)
    first = service.ledger.request(
        AllocationRequest(job_id="first", servers=("shared",)), pool=POOL
    ).allocation
    assert first.state is AllocationState.ACTIVE, first.error
    provisioner = service.ledger.provisioner
    assert isinstance(provisioner, ProcessProvisioner)
    shared = provisioner.server_info(POOL, "shared")
    assert shared is not None and shared.pid is not None
    before = held(service)

    failed = service.ledger.request(
        AllocationRequest(job_id="second", servers=("shared", "own"), workers=1),
        pool=POOL,
    ).allocation

    assert failed.state is AllocationState.FAILED
    assert SAYS in (failed.error or "")
    assert held(service) == before
    recorded = service.ledger.pool(POOL).servers
    assert set(recorded) == {"shared"}  # "own" was started for it: stopped
    assert recorded["shared"].references == 1  # first's, still running
    again = provisioner.server_info(POOL, "shared")
    assert again is not None and again.pid == shared.pid
    own = provisioner.server_info(POOL, "own")
    assert own is not None and own.pid is None and own.status == "stopped"
    [slot] = failed.workers
    assert refuses_connections(slot.port)
    service.ledger.release(first.allocation_id)
    assert verify(service).clean


def test_a_worker_whose_command_does_not_exist_fails_its_allocation(
    open_ledger: OpenLedger, tmp_path: Path, mark: str
) -> None:
    service = open_ledger({"worker_command": ["no-such-agent-runner", "{port}"]})
    before = held(service)

    result = service.ledger.request(AllocationRequest(job_id="x", workers=1), pool=POOL)

    allocation = result.allocation
    error = assert_failed_and_nothing_held(service, allocation, before, tmp_path, mark)
    [slot] = allocation.workers
    assert f"worker {slot.worker_id!r} did not start" in error
    assert "command not found: 'no-such-agent-runner'" in error
    assert worker_events(service, slot.worker_id) == []  # it never ran


def test_a_worker_that_never_listens_fails_at_its_start_timeout_and_is_stopped(
    open_ledger: OpenLedger, tmp_path: Path, mark: str
) -> None:
    # a shell that says so at once, then runs and never listens
    never = ["sh", "-c", "echo 'waiting, not listening on {port}'; exec sleep 600"]
    service = open_ledger(
        {"worker_command": never, "worker_start_timeout_seconds": 1.5}
    )
    before = held(service)

    result = service.ledger.request(AllocationRequest(job_id="x", workers=1), pool=POOL)

    allocation = result.allocation
    error = assert_failed_and_nothing_held(service, allocation, before, tmp_path, mark)
    [slot] = allocation.workers
    assert f"did not listen on its port {slot.port} within 1.5 s" in error
    assert f"waiting, not listening on {slot.port}" in error  # its output, quoted
    events = worker_events(service, slot.worker_id)
    assert kinds(events) == ["Registered", "Started", "Stopped"]
    assert events[-1].detail["reason"] == (
        f"its allocation's start failed: worker {slot.worker_id!r} did not "
        f"listen on its port {slot.port} within 1.5 s"
    )


def test_a_worker_on_a_port_in_use_is_not_started(
    open_ledger: OpenLedger, tmp_path: Path, mark: str
) -> None:
    service = open_ledger({"worker_command": WORKER})
    before = held(service)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", POOL_WORKER_FIRST))
        squatter.listen(1)
        result = service.ledger.request(
            AllocationRequest(job_id="x", workers=1), pool=POOL
        )
    allocation = result.allocation
    assert allocation.state is AllocationState.FAILED
    assert (
        f"port {POOL_WORKER_FIRST} on 127.0.0.1 is already in use by another "
        "program (not a process of this ledger): stop that program, or give "
        "pool 'procs' ports nothing else uses (worker_ports = [FIRST, LAST] in "
        "[pools.procs] of the catalog"
    ) in (allocation.error or "")
    assert held(service) == before
    assert marked_processes(mark) == []


# -- ready ---------------------------------------------------------------------------


def test_a_worker_that_listens_late_is_activated_once_it_listens(
    open_ledger: OpenLedger, mark: str
) -> None:
    late = [*WORKER, "--delay-seconds", "2"]  # listens 2 s after its start
    service = open_ledger({"worker_command": late})
    request = AllocationRequest(job_id="late", workers=1)
    thread, answers, allocation_id = request_in_thread(service, request)
    try:
        assert wait_until(lambda: marked_processes(mark) != [], 15)
        # running, not yet listening: the allocation waits
        allocation = service.ledger.allocation(allocation_id)
        [slot] = allocation.workers
        if refuses_connections(slot.port):
            assert service.ledger.allocation(allocation_id).state is (
                AllocationState.PENDING
            )
    finally:
        thread.join(60)
    allocation = answers["result"].allocation
    assert allocation.state is AllocationState.ACTIVE, allocation.error
    # active means it listens: it answers at once, without waiting
    facts = facts_on(slot.port)
    assert facts is not None
    assert facts["env"]["LEDGER_WORKER_ID"] == slot.worker_id
    events = worker_events(service, slot.worker_id)
    assert kinds(events) == ["Registered", "Started", "Ready"]
    ready = events[-1]
    assert ready.detail["check"] == "port" and ready.detail["port"] == slot.port
    assert allocation.activated_at is not None
    assert ready.timestamp <= allocation.activated_at
    record = service.ledger.worker_process(slot.worker_id)
    assert record is not None and record.ready_at == ready.timestamp
    assert verify(service).clean


def test_a_worker_without_a_port_is_ready_once_it_keeps_running(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({"worker_command": SLEEPER, "worker_settle_seconds": 0.5})

    result = service.ledger.request(AllocationRequest(job_id="x", workers=2), pool=POOL)

    allocation = result.allocation
    assert allocation.state is AllocationState.ACTIVE, allocation.error
    for slot in allocation.workers:
        events = worker_events(service, slot.worker_id)
        assert kinds(events) == ["Registered", "Started", "Ready"]
        assert events[-1].detail["check"] == "running"
        assert events[-1].detail["seconds"] >= 0.5
    service.ledger.release(allocation.allocation_id)
    for slot in allocation.workers:
        assert kinds(worker_events(service, slot.worker_id))[-1] == "Stopped"


# -- a release during a slow start ---------------------------------------------------


def test_a_release_during_a_slow_worker_start_leaves_no_process_behind(
    open_ledger: OpenLedger, mark: str
) -> None:
    slow = [*WORKER, "--delay-seconds", "20"]  # listens long after the release
    service = open_ledger({"worker_command": slow})
    before = held(service)
    request = AllocationRequest(job_id="slow", workers=2)
    thread, answers, allocation_id = request_in_thread(service, request)
    try:
        assert wait_until(lambda: len(marked_processes(mark)) == 2, 15)
        assert service.ledger.allocation(allocation_id).state is (
            AllocationState.PENDING
        )
        outcome = service.ledger.release(allocation_id)
        assert outcome.result.status == "released"
    finally:
        thread.join(60)
    assert not thread.is_alive()
    assert answers["result"].allocation.state is not AllocationState.ACTIVE
    allocation = service.ledger.allocation(allocation_id)
    assert allocation.state is AllocationState.RELEASED
    assert wait_until(lambda: marked_processes(mark) == [], 15)
    assert held(service) == before
    for slot in allocation.workers:
        assert refuses_connections(slot.port)
        events = kinds(worker_events(service, slot.worker_id))
        assert events == ["Registered", "Started", "Stopped"], events
    assert verify(service).clean


# -- through the MCP tools -------------------------------------------------------------


@pytest.mark.anyio
async def test_request_resources_says_failed_with_the_reason_and_gives_all_back(
    open_ledger: OpenLedger, mark: str
) -> None:
    service = open_ledger({"worker_command": CRASH})
    async with Client(stdio_server(service)) as client:
        before = await call(client, "get_capacity", pool=POOL)
        made = await call(
            client,
            "request_resources",
            job_id="crash",
            mcp_servers=[],
            workers=2,
            pool=POOL,
        )
        assert made["status"] == "failed"
        assert made["reason"]["code"] == "provisioning_failed"
        worker_ids = [w["worker_id"] for w in made["workers_allocated"]]
        assert any(f"worker {w!r} did not start" in made["error"] for w in worker_ids)
        assert "it exited before it was ready (exit code 1)" in made["error"]
        assert SAYS in made["error"]
        after = await call(client, "get_capacity", pool=POOL)
        before.pop("updated_at")
        after.pop("updated_at")
        assert after == before
        detail = await call(
            client, "get_allocation", allocation_id=made["allocation_id"]
        )
        assert detail["state"] == "failed"
    assert await anyio.to_thread.run_sync(
        lambda: wait_until(lambda: marked_processes(mark) == [], 10)
    )


@pytest.mark.anyio
async def test_get_allocation_shows_a_worker_starting_until_a_release_stops_it(
    open_ledger: OpenLedger, mark: str
) -> None:
    slow = [*WORKER, "--delay-seconds", "20"]
    service = open_ledger({"worker_command": slow})
    request = AllocationRequest(job_id="slow", workers=1)
    thread, _, allocation_id = request_in_thread(service, request)
    try:
        async with Client(stdio_server(service)) as client:

            async def shown() -> dict[str, Any]:
                detail = await call(
                    client, "get_allocation", allocation_id=allocation_id
                )
                return detail

            for _ in range(300):  # until its worker has a record (< 15 s)
                detail = await shown()
                if detail["workers"][0].get("pid") is not None:
                    break
                await anyio.sleep(0.05)
            assert detail["state"] == "pending"
            [worker] = detail["workers"]
            assert worker["state"] == "starting"
            released = await call(
                client, "release_resources", allocation_id=allocation_id
            )
            assert released["status"] == "released"
            detail = await shown()
            assert detail["state"] == "released"
            assert detail["workers"][0]["state"] == "stopped"
    finally:
        await anyio.to_thread.run_sync(lambda: thread.join(60))
    assert await anyio.to_thread.run_sync(
        lambda: wait_until(lambda: marked_processes(mark) == [], 10)
    )
