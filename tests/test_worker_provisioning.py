"""Workers as real processes through the process provisioner: a pool with a
`worker_command` starts each reserved worker, limited to the pool's worker
size and told its allocation, worker id and MCP endpoints; a release stops
them; a worker killed for passing its memory is recorded with that cause and
shown by get_allocation; the MCP server tools answer for a running server.
Every process a test starts is killed when it ends (tests/process_support.py:
the workers inherit the test's mark from the ledger's environment)."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from mcp import Client

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.provisioning.limits import MIB
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from allocation_ledger.domain.worker_process import worker_process_uuid
from tests.mcp_support import call
from tests.process_support import (
    MARK,
    POOL,
    TIME_SERVER,
    is_alive,
    marking,
    process_ledgers,
    wait_until,
)

pytestmark = pytest.mark.anyio

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
TIME = {"command": TIME_SERVER, "idle_timeout_seconds": 60}
OpenLedger = Callable[..., AllocationService]


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's mark, in the environment the workers inherit; every marked
    process is killed when the test ends."""
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
        yield open_


def provisioner_of(service: AllocationService) -> ProcessProvisioner:
    provisioner = service.ledger.provisioner
    assert isinstance(provisioner, ProcessProvisioner)
    return provisioner


def http_get(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
        facts: dict[str, Any] = json.loads(answer.read())
        return facts


def answers(port: int) -> bool:
    try:
        http_get(port)
    except OSError:
        return False
    return True


def worker_kinds(service: AllocationService, worker_id: str) -> list[str]:
    store = service.ledger.repository.event_store
    return [type(e).__name__ for e in store.get(worker_process_uuid(worker_id))]


def test_a_pool_with_a_worker_command_makes_the_process_provisioner_the_default(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({}, {"worker_command": WORKER})
    assert service.settings.catalog.effective_provisioner == "process"
    enforcement = provisioner_of(service).worker_enforcement()
    assert enforcement is not None
    assert enforcement["memory"] in ("cgroup-v2", "cgroup-v1", "rlimit-as")


async def test_workers_run_limited_with_their_facts_and_stop_at_release(
    open_ledger: OpenLedger,
) -> None:
    pool = {"worker_command": WORKER, "worker_cpu": 0.5, "worker_memory": 96}
    service = open_ledger({"time": TIME}, pool)
    provisioner = provisioner_of(service)
    asked = AllocationRequest(job_id="job", workers=2, servers=("time",))
    result = await anyio.to_thread.run_sync(
        lambda: service.ledger.request(asked, pool=POOL)
    )
    allocation = result.allocation
    assert allocation.state is AllocationState.ACTIVE, allocation.error
    time_endpoint = allocation.endpoints.servers["time"]
    pids: list[int] = []
    for slot in allocation.workers:
        info = provisioner.worker_info(slot.worker_id)
        assert info is not None and info.status == "running"
        pids.append(info.pid)
        assert wait_until(lambda port=slot.port: answers(port), timeout=15)
        facts = http_get(slot.port)
        assert facts["pid"] == info.pid
        assert facts["env"]["LEDGER_ALLOCATION_ID"] == allocation.allocation_id
        assert facts["env"]["LEDGER_WORKER_ID"] == slot.worker_id
        endpoints = json.loads(facts["env"]["LEDGER_MCP_ENDPOINTS"])
        assert endpoints == {"time": time_endpoint}
        limits = info.limits
        assert limits.memory_mib == 96 and limits.cpu_millicores == 500
        if limits.memory == "cgroup-v2":
            memory = Path(str(limits.memory_group)) / "memory.max"
            assert memory.read_text().strip() == str(96 * MIB)
        elif limits.memory == "cgroup-v1":
            memory = Path(str(limits.memory_group)) / "memory.limit_in_bytes"
            assert memory.read_text().strip() == str(96 * MIB)
        else:
            assert limits.rlimit_as_bytes == 96 * MIB
        assert worker_kinds(service, slot.worker_id) == [
            "Registered",
            "Started",
            "Ready",
        ]

    async with Client(stdio_server(service)) as client:
        capacity = await call(client, "get_capacity", pool=POOL)
        assert capacity["worker_enforcement"]["memory"] == limits.memory
        listed = await call(client, "list_mcp_servers", pool=POOL)
        assert listed["provisioner"] == "process"
        [server] = listed["servers"]
        status = await call(client, "get_mcp_status", name="time", pool=POOL)
        assert status == server
        assert status["status"] == "running" and status["references"] == 1
        assert status["endpoint"] == time_endpoint
        assert status["pid"] is not None and status["last_exit"] is None
        detail = await call(
            client, "get_allocation", allocation_id=allocation.allocation_id
        )
        shown = {w["worker_id"]: w for w in detail["workers"]}
        assert {w["pid"] for w in shown.values()} == set(pids)
        assert {w["state"] for w in shown.values()} == {"running"}

    await anyio.to_thread.run_sync(
        lambda: service.ledger.release(allocation.allocation_id)
    )
    assert wait_until(lambda: not any(is_alive(pid) for pid in pids), timeout=15)
    for slot in allocation.workers:
        assert worker_kinds(service, slot.worker_id)[-1] == "Stopped"
        record = service.ledger.worker_process(slot.worker_id)
        assert record is not None and record.cause == "stopped"
    assert verify(service).clean


async def test_a_worker_past_its_memory_is_killed_and_the_cause_is_recorded(
    open_ledger: OpenLedger,
) -> None:
    # It allocates 2 s after its start: after its readiness check (it keeps
    # running for the 1 s settle time), so its allocation turns active first.
    command = [*WORKER, "--mode", "allocate", "--megabytes", "400"]
    command += ["--delay-seconds", "2"]
    pool = {"worker_command": command, "worker_memory": 64, "worker_ready": "running"}
    service = open_ledger({}, pool)
    asked = AllocationRequest(job_id="hungry", workers=1)
    result = await anyio.to_thread.run_sync(
        lambda: service.ledger.request(asked, pool=POOL)
    )
    allocation = result.allocation
    assert allocation.state is AllocationState.ACTIVE, allocation.error
    [slot] = allocation.workers

    def ended() -> bool:
        record = service.ledger.worker_process(slot.worker_id)
        return record is not None and record.status == "exited"

    assert wait_until(ended, timeout=30)
    record = service.ledger.worker_process(slot.worker_id)
    assert record is not None
    assert record.cause == "memory_limit", record.last_exit
    assert record.allocation_id == allocation.allocation_id
    # the allocation stays as it is: a worker's death is a fact to see
    assert service.ledger.allocation(allocation.allocation_id).state is (
        AllocationState.ACTIVE
    )
    async with Client(stdio_server(service)) as client:
        detail = await call(
            client, "get_allocation", allocation_id=allocation.allocation_id
        )
        assert detail["state"] == "active"
        [worker] = detail["workers"]
        assert worker["state"] == "exited"
        assert worker["cause"] == "memory_limit"


def test_a_worker_that_cannot_start_fails_the_allocation_and_holds_nothing(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({}, {"worker_command": ["/nonexistent/agent-runner"]})
    before = service.ledger.pool(POOL).reservations
    result = service.ledger.request(AllocationRequest(job_id="x", workers=2), pool=POOL)
    allocation = result.allocation
    assert allocation.state is AllocationState.FAILED
    assert "did not start" in (allocation.error or "")
    assert service.ledger.pool(POOL).reservations == before
    provisioner = provisioner_of(service)
    assert provisioner.workers is not None
    assert not [i for i in provisioner.workers.status() if i.status == "running"]


def test_reconcile_adopts_the_workers_of_live_allocations(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({}, {"worker_command": WORKER})
    kept = service.ledger.request(
        AllocationRequest(job_id="kept", workers=1), pool=POOL
    )
    [slot] = kept.allocation.workers
    info = provisioner_of(service).worker_info(slot.worker_id)
    assert info is not None
    provisioner_of(service).close()  # the ledger stops, its workers run on
    service.close()

    again = open_ledger({}, {"worker_command": WORKER})
    lines = provisioner_of(again).reconcile()
    assert any("adopted" in line and slot.worker_id in line for line in lines), lines
    assert worker_kinds(again, slot.worker_id)[-1] == "Adopted"
    again.ledger.release(kept.allocation.allocation_id)
    assert wait_until(lambda: not is_alive(info.pid), timeout=15)
