"""The process provisioner with real processes: the MCP servers an allocation
names run at the endpoints it is handed, are shared, stopped when idle,
restarted when killed; a start that fails fails the allocation and holds
nothing; the slow path keeps the lease and tears down what a release
interrupted. The servers are the reference `mcp-server-time` and the tiny
test server (tests/mcp_test_server.py); every process a test starts is
killed when it ends (tests/process_support.py)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp import Client

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.provisioning.data_directory import (
    DataDirectoryBusyError,
)
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.results import RequestResult
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.mcp_support import call, call_error, max_notification_id, text_of
from tests.process_support import (
    POOL,
    POOL_MCP_FIRST,
    TEST_SERVER,
    TIME_SERVER,
    is_alive,
    kinds,
    marked_processes,
    marking,
    process_events,
    process_ledgers,
    refuses_connections,
    request_in_thread,
    wait_until,
)

pytestmark = pytest.mark.anyio

TIME = {"command": TIME_SERVER, "idle_timeout_seconds": 60}
ECHO = {"command": TEST_SERVER}
SLOW = {"command": [*TEST_SERVER, "--delay-seconds", "2"]}
OpenLedger = Callable[..., AllocationService]


@pytest.fixture
def mark(tmp_path: Path) -> Iterator[str]:
    """This test's mark; its marked processes are killed when it ends."""
    yield from marking(tmp_path)


@pytest.fixture
def open_ledger(
    mark: str, tmp_path: Path, manual_clock: ManualClock
) -> Iterator[OpenLedger]:
    """Opens a ledger on a SQLite file whose catalog names `servers` (its
    pools made what the catalog says); its processes are stopped at the end."""
    with process_ledgers(mark, tmp_path, manual_clock) as open_:
        yield open_


async def request(client: Client, job_id: str, *servers: str, **more: Any) -> Any:
    return await call(
        client,
        "request_resources",
        job_id=job_id,
        mcp_servers=list(servers),
        pool=POOL,
        **more,
    )


async def server_of(client: Client, allocation_id: str) -> dict[str, Any]:
    """The one MCP server of an allocation, as get_allocation shows it."""
    detail = await call(client, "get_allocation", allocation_id=allocation_id)
    [server] = detail["mcp_servers"]
    return dict(server)


def held(capacity: dict[str, Any]) -> dict[str, Any]:
    """What get_capacity says is held and running (not its times)."""
    keys = ("allocated_cpu", "allocated_memory", "allocated_workers")
    return {key: capacity[key] for key in keys} | {
        "running_mcp_servers": capacity["running_mcp_servers"],
        "active_allocations": capacity["active_allocations"],
    }


async def test_an_agent_calls_the_server_at_its_endpoint_shared_then_stopped_idle(
    open_ledger: OpenLedger, manual_clock: ManualClock, mark: str
) -> None:
    service = open_ledger({"time": TIME})
    async with Client(stdio_server(service)) as client:
        before = await call(client, "get_capacity", pool=POOL)
        first = await request(client, "agent-a", "time")
        assert first["status"] == "active"
        [handed] = first["mcp_servers"]
        assert handed["endpoint"] == f"http://localhost:{POOL_MCP_FIRST}/mcp"
        async with Client(handed["endpoint"]) as agent:
            answer = await agent.call_tool("get_current_time", {"timezone": "UTC"})
        assert not answer.is_error, text_of(answer)
        assert '"timezone": "UTC"' in text_of(answer)

        second = await request(client, "agent-b", "time")
        assert second["mcp_servers"][0]["endpoint"] == handed["endpoint"]
        assert second["mcp_servers"][0]["started"] is False
        one = await server_of(client, first["allocation_id"])
        two = await server_of(client, second["allocation_id"])
        assert one["pid"] == two["pid"] and is_alive(one["pid"])
        assert one["status"] == "running" and one["restarts"] == 0
        assert kinds(process_events(service, "time")) == [
            "Registered",
            "Started",
            "HealthPassed",
        ]

        for allocation in (first, second):
            await call(
                client, "release_resources", allocation_id=allocation["allocation_id"]
            )
        assert is_alive(one["pid"])  # idle, not stopped yet
        manual_clock.advance(61)
        stopped = await anyio.to_thread.run_sync(service.ledger.stop_idle_servers)
        assert [(s.name, s.port) for s in stopped.stopped] == [("time", POOL_MCP_FIRST)]
        assert refuses_connections(POOL_MCP_FIRST)
        assert not is_alive(one["pid"])
        events = process_events(service, "time")
        assert kinds(events)[-1] == "Stopped"
        assert {e.actor for e in events} == {"system:provisioner"}
        after = await call(client, "get_capacity", pool=POOL)
        assert held(after) == held(before)
    assert marked_processes(mark) == []
    assert verify(service).clean


async def test_a_server_not_in_the_catalog_is_refused_naming_the_known_ones(
    open_ledger: OpenLedger, mark: str
) -> None:
    service = open_ledger({"time": TIME, "echo": ECHO})
    async with Client(stdio_server(service)) as client:
        written = max_notification_id(service)
        text = await call_error(
            client,
            "request_resources",
            {"job_id": "a", "mcp_servers": ["time", "gitlab"], "pool": POOL},
        )
        assert 'unknown MCP server "gitlab": this ledger\'s catalog has echo, time' in (
            text
        )
        assert max_notification_id(service) == written
    assert marked_processes(mark) == []


@pytest.mark.parametrize(
    ("command", "says"),
    [
        (["/nonexistent/mcp-server"], "No such file or directory"),
        ([*TEST_SERVER, "--crash-at-start"], "asked to crash at start"),
    ],
    ids=["missing-command", "crash-at-start"],
)
async def test_a_server_that_does_not_start_fails_the_allocation_holding_nothing(
    open_ledger: OpenLedger, mark: str, command: list[str], says: str
) -> None:
    service = open_ledger({"broken": {"command": command}})
    async with Client(stdio_server(service)) as client:
        before = await call(client, "get_capacity", pool=POOL)
        result = await request(client, "a", "broken", workers=1)
        assert result["status"] == "failed"
        assert result["reason"] == {"code": "provisioning_failed"}
        assert "MCP server 'broken' of pool 'procs' did not start" in result["error"]
        assert says in result["error"]
        detail = await call(
            client, "get_allocation", allocation_id=result["allocation_id"]
        )
        assert detail["reason"] == {"code": "provisioning_failed"}
        assert detail["error"] == result["error"]
        after = await call(client, "get_capacity", pool=POOL)
        assert held(after) == held(before)
        assert after["mcp_servers"] == before["mcp_servers"]
    assert marked_processes(mark) == []
    assert refuses_connections(POOL_MCP_FIRST)
    failed = process_events(service, "broken")
    assert "HealthFailed" in kinds(failed)
    assert says in failed[-1].detail["stderr_tail"]
    assert verify(service).clean


async def test_a_server_killed_while_in_use_is_restarted_and_the_history_says_so(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({"echo": ECHO})
    async with Client(stdio_server(service)) as client:
        result = await request(client, "a", "echo")
        endpoint = result["mcp_servers"][0]["endpoint"]
        killed = (await server_of(client, result["allocation_id"]))["pid"]
        os.killpg(killed, signal.SIGKILL)

        def restarted() -> bool:
            return "Restarted" in kinds(process_events(service, "echo"))

        assert await anyio.to_thread.run_sync(wait_until, restarted, 60)
        events = process_events(service, "echo")
        exited = next(e for e in events if type(e).__name__ == "Exited")
        assert exited.pid == killed and exited.detail["signal"] == signal.SIGKILL
        now = await server_of(client, result["allocation_id"])
        assert now["status"] == "running" and now["restarts"] == 1
        assert now["pid"] != killed and is_alive(now["pid"])
        async with Client(endpoint) as agent:
            answer = await agent.call_tool("echo", {"text": "still here"})
        assert text_of(answer) == "still here"
    assert verify(service).clean


def _request_in_thread(
    service: AllocationService, servers: tuple[str, ...], ttl_seconds: int = 3600
) -> tuple[threading.Thread, dict[str, RequestResult], str]:
    """Start a request (request_id "r1") that blocks while its servers start."""
    request_ = AllocationRequest(
        job_id="slow", servers=servers, ttl_seconds=ttl_seconds
    )
    return request_in_thread(service, request_)


def test_a_release_during_a_slow_start_leaves_no_process_behind(
    open_ledger: OpenLedger, mark: str
) -> None:
    service = open_ledger({"slow": SLOW})
    thread, answers, allocation_id = _request_in_thread(service, ("slow",))
    assert wait_until(lambda: marked_processes(mark) != [])
    assert service.ledger.allocation(allocation_id).state is AllocationState.PENDING
    outcome = service.ledger.release(allocation_id)
    assert outcome.result.status == "released"
    thread.join(60)
    assert answers["result"].allocation.state is AllocationState.RELEASED
    assert wait_until(lambda: marked_processes(mark) == [], 15)
    assert refuses_connections(POOL_MCP_FIRST)
    assert "slow" not in service.ledger.pool(POOL).servers
    assert kinds(process_events(service, "slow"))[-1] == "Stopped"
    assert verify(service).clean


def test_the_lease_counts_from_activation_in_the_pool_too(
    open_ledger: OpenLedger, manual_clock: ManualClock, mark: str
) -> None:
    service = open_ledger({"slow": SLOW})
    ledger = service.ledger
    thread, answers, allocation_id = _request_in_thread(service, ("slow",), 60)
    assert wait_until(lambda: marked_processes(mark) != [])
    manual_clock.advance(30)  # the start takes "30 s"
    thread.join(60)
    allocation = answers["result"].allocation
    assert allocation.state is AllocationState.ACTIVE
    assert allocation.requested_at is not None and allocation.activated_at is not None
    assert allocation.activated_at - allocation.requested_at == timedelta(seconds=30)
    assert allocation.expires_at == allocation.activated_at + timedelta(seconds=60)
    reservation = ledger.pool(POOL).reservations[allocation_id]
    assert reservation.expires_at == allocation.expires_at
    manual_clock.advance(59)  # past the provisional expiry, not the real one
    assert ledger.expire_due().expired == ()
    manual_clock.advance(1)
    assert ledger.expire_due().expired == (allocation_id,)
    assert verify(service).clean


def test_a_recorded_server_that_cannot_start_again_is_stopped_unless_in_use(
    open_ledger: OpenLedger,
) -> None:
    first = open_ledger({"idle": ECHO, "used": ECHO})
    done = first.ledger.request(
        AllocationRequest(job_id="a", servers=("idle",)), pool=POOL
    )
    kept = first.ledger.request(
        AllocationRequest(job_id="b", servers=("used",)), pool=POOL
    )
    first.ledger.release(done.allocation.allocation_id)
    provisioner = first.ledger.provisioner
    assert isinstance(provisioner, ProcessProvisioner)
    provisioner.close(stop_all=True)  # the ledger still records both
    first.close()

    crashing = {"command": [*TEST_SERVER, "--crash-at-start"]}
    second = open_ledger({"idle": crashing, "used": crashing})
    restarted = second.ledger.provisioner
    assert isinstance(restarted, ProcessProvisioner)
    lines = restarted.reconcile()
    servers = second.ledger.pool(POOL).servers
    assert "idle" not in servers
    assert "used" in servers and servers["used"].references == 1
    assert any("idle" in line and "recorded stopped" in line for line in lines)
    assert any("used" in line and "still in use" in line for line in lines)
    assert "HealthFailed" in kinds(process_events(second, "used"))
    assert second.ledger.allocation(kept.allocation.allocation_id).state is (
        AllocationState.ACTIVE
    )
    assert verify(second).clean


def test_one_ledger_at_a_time_runs_the_servers_of_a_data_directory(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    service = open_ledger({"echo": ECHO})
    with pytest.raises(DataDirectoryBusyError, match=f"pid {os.getpid()}"):
        ProcessProvisioner(service.settings.catalog, tmp_path / "data")
    provisioner = service.ledger.provisioner
    assert isinstance(provisioner, ProcessProvisioner)
    provisioner.close()
    ProcessProvisioner(service.settings.catalog, tmp_path / "data").close()


async def test_an_idle_server_is_reclaimed_for_room_and_its_process_stopped(
    open_ledger: OpenLedger, mark: str
) -> None:
    """Each instance reserves 1 core of the pool's 1.5 while it runs, idle
    too: `first`, idle, is stopped (its process gone) to make room for
    `second`; get_capacity shows the running instance's cost once."""
    costly = {**ECHO, "cpu": 1, "memory": 64}
    service = open_ledger({"first": costly, "second": costly}, pool={"cpu": 1.5})
    async with Client(stdio_server(service)) as client:
        used = await request(client, "a", "first")
        assert used["status"] == "active", used
        pid = (await server_of(client, used["allocation_id"]))["pid"]
        await call(client, "release_resources", allocation_id=used["allocation_id"])
        capacity = await call(client, "get_capacity", pool=POOL)
        assert capacity["allocated_cpu"] == 1.0  # idle, still running
        assert is_alive(pid)

        other = await request(client, "b", "second")
        assert other["status"] == "active", other
        assert wait_until(lambda: not is_alive(pid), timeout=10)
        capacity = await call(client, "get_capacity", pool=POOL)
        assert capacity["allocated_cpu"] == 1.0
        assert capacity["running_mcp_servers"] == ["second"]
        [instance] = capacity["mcp_servers"]
        assert instance["cost"] == {"cpu": 1.0, "memory": 64, "workers": 0}
        assert kinds(process_events(service, "first"))[-1] == "Stopped"
        await call(client, "release_resources", allocation_id=other["allocation_id"])
    assert verify(service).clean
