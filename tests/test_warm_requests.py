"""Warm requests with the process provisioner, on real processes: a request
whose MCP servers all already run (and whose pool starts no workers) is
reserved and activated in one transaction, sharing the running process;
anything else (a server to start, a worker to start, a stop of the server
under way) takes the slow path, pending then active.

The ledger's clock ticks a millisecond at every reading, so one transaction
(one moment) and two (two moments) show apart in the allocation's history.
Every process a test starts is killed when it ends (tests/process_support.py).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import pytest
from mcp import Client

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import AllocationNotFoundError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.results import RequestResult
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.mcp_support import call, text_of
from tests.process_support import (
    MARK,
    POOL,
    TEST_SERVER,
    is_alive,
    kinds,
    marking,
    process_events,
    process_ledgers,
    wait_until,
)

pytestmark = pytest.mark.anyio

ECHO = {"command": TEST_SERVER, "idle_timeout_seconds": 60}
WORKER = [
    sys.executable,
    str(Path(__file__).with_name("worker_program.py")),
    "--port",
    "{port}",
    "--worker-id",
    "{worker_id}",
    "--allocation-id",
    "{allocation_id}",
]
OpenLedger = Callable[..., AllocationService]


class TickingClock(ManualClock):
    """A manual clock that also moves a millisecond at every reading."""

    def now(self) -> datetime:
        return self.advance(0.001)


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's mark, also in the environment workers inherit; every
    marked process is killed when the test ends."""
    for value in marking(tmp_path):
        monkeypatch.setenv(MARK, value)
        yield value


@pytest.fixture
def open_ledger(mark: str, tmp_path: Path, clock: TickingClock) -> Iterator[OpenLedger]:
    """Opens a ledger whose catalog names `servers` and gives POOL `pool`'s
    keys; its processes are stopped at the end."""
    with process_ledgers(mark, tmp_path, clock) as open_:
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


async def history(client: Client, allocation_id: str) -> list[tuple[str, str]]:
    """(event, at) of each event of the allocation's history."""
    found = await call(client, "get_allocation_history", allocation_id=allocation_id)
    return [(event["event"], event["at"]) for event in found["events"]]


def one_transaction(events: list[tuple[str, str]]) -> bool:
    """Requested then Activated, at one moment (one unit of work)."""
    [(requested, at), (activated, then)] = events
    assert (requested, activated) == ("requested", "activated")
    return at == then


async def pids(client: Client, allocation_id: str) -> dict[str, int]:
    """The pid of each of the allocation's servers, as get_allocation shows it."""
    detail = await call(client, "get_allocation", allocation_id=allocation_id)
    return {server["name"]: server["pid"] for server in detail["mcp_servers"]}


def state_of(ledger: Ledger, allocation_id: str) -> AllocationState | None:
    """The allocation's state; None before it is recorded."""
    try:
        return ledger.allocation(allocation_id).state
    except AllocationNotFoundError:
        return None


def provisioner_of(service: AllocationService) -> ProcessProvisioner:
    provisioner = service.ledger.provisioner
    assert isinstance(provisioner, ProcessProvisioner)
    return provisioner


async def test_a_request_for_a_running_server_is_active_in_one_transaction(
    open_ledger: OpenLedger, clock: TickingClock
) -> None:
    service = open_ledger({"echo": ECHO})
    async with Client(stdio_server(service)) as client:
        first = await request(client, "cold", "echo")
        assert first["status"] == "active"
        assert not one_transaction(await history(client, first["allocation_id"]))
        [started] = (await pids(client, first["allocation_id"])).values()

        second = await request(client, "warm", "echo")
        assert second["status"] == "active" and second["state"] == "active"
        assert (
            second["mcp_servers"][0]["endpoint"]
            == (first["mcp_servers"][0]["endpoint"])
        )
        assert second["mcp_servers"][0]["started"] is False
        assert one_transaction(await history(client, second["allocation_id"]))
        assert await pids(client, second["allocation_id"]) == {"echo": started}
        async with Client(second["mcp_servers"][0]["endpoint"]) as agent:
            answer = await agent.call_tool("echo", {"text": "warm"})
        assert text_of(answer) == "warm"
        assert kinds(process_events(service, "echo")) == [
            "Registered",
            "Started",
            "HealthPassed",
        ]
        server = service.ledger.pool(POOL).servers["echo"]
        assert server.references == 2 and server.idle_since is None

        # The lease counts from that one moment, in the pool too.
        allocation = service.ledger.allocation(second["allocation_id"])
        reservation = service.ledger.pool(POOL).reservations[second["allocation_id"]]
        assert reservation.expires_at == allocation.expires_at
    assert verify(service).clean


async def test_an_idle_server_taken_up_in_one_transaction_is_not_stopped_idle(
    open_ledger: OpenLedger, clock: TickingClock
) -> None:
    service = open_ledger({"echo": ECHO})
    ledger = service.ledger
    async with Client(stdio_server(service)) as client:
        first = await request(client, "a", "echo")
        [pid] = (await pids(client, first["allocation_id"])).values()
        await call(client, "release_resources", allocation_id=first["allocation_id"])
        assert ledger.pool(POOL).servers["echo"].idle_since is not None
        clock.advance(59)  # idle, not yet for its idle timeout

        again = await request(client, "b", "echo")
        assert again["status"] == "active"
        assert one_transaction(await history(client, again["allocation_id"]))
        server = ledger.pool(POOL).servers["echo"]
        assert server.references == 1 and server.idle_since is None

        clock.advance(120)  # past the idle timeout of the earlier idle spell
        stopped = await anyio.to_thread.run_sync(ledger.stop_idle_servers)
        assert stopped.stopped == ()
        assert is_alive(pid)
        assert await pids(client, again["allocation_id"]) == {"echo": pid}

        await call(client, "release_resources", allocation_id=again["allocation_id"])
        clock.advance(61)
        stopped = await anyio.to_thread.run_sync(ledger.stop_idle_servers)
        assert [s.name for s in stopped.stopped] == ["echo"]
        assert not is_alive(pid)
    assert verify(service).clean


async def test_a_request_naming_a_server_not_running_takes_the_slow_path(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({"echo": ECHO, "other": ECHO})
    async with Client(stdio_server(service)) as client:
        first = await request(client, "a", "echo")
        [echo_pid] = (await pids(client, first["allocation_id"])).values()

        both = await request(client, "b", "echo", "other")
        assert both["status"] == "active"
        assert not one_transaction(await history(client, both["allocation_id"]))
        running = await pids(client, both["allocation_id"])
        assert running["echo"] == echo_pid
        assert running["other"] != echo_pid and is_alive(running["other"])
        started = {s["name"]: s["started"] for s in both["mcp_servers"]}
        assert started == {"echo": False, "other": True}
        for handed in both["mcp_servers"]:
            async with Client(handed["endpoint"]) as agent:
                answer = await agent.call_tool("echo", {"text": handed["name"]})
            assert text_of(answer) == handed["name"]

        # Now both run: the same request is warm.
        warm = await request(client, "c", "echo", "other")
        assert one_transaction(await history(client, warm["allocation_id"]))
        assert await pids(client, warm["allocation_id"]) == running
    assert verify(service).clean


@pytest.mark.parametrize("workers", [0, 1])
async def test_a_pool_with_a_worker_command_never_takes_the_fast_path(
    open_ledger: OpenLedger, workers: int
) -> None:
    service = open_ledger(
        {"echo": ECHO}, pool={"worker_command": WORKER, "worker_memory": 256}
    )
    async with Client(stdio_server(service)) as client:
        first = await request(client, "a", "echo")
        assert first["status"] == "active"
        second = await request(client, "b", "echo", workers=workers)
        assert second["status"] == "active"
        assert len(second["workers_allocated"]) == workers
        assert not one_transaction(await history(client, second["allocation_id"]))
        assert await pids(client, second["allocation_id"]) == await pids(
            client, first["allocation_id"]
        )
    assert verify(service).clean


def test_a_running_server_whose_start_or_stop_is_under_way_is_not_warm(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({"echo": ECHO})
    ledger = service.ledger
    echo = AllocationRequest(job_id="a", servers=("echo",))
    first = ledger.request(echo, pool=POOL)
    assert first.allocation.state is AllocationState.ACTIVE

    answers: dict[str, RequestResult] = {}
    second = allocation_id_for_request(POOL, "r2")
    busy = provisioner_of(service)._lock(POOL, "echo")
    with busy:  # as a stop or start of the server holds it
        thread = threading.Thread(
            target=lambda: answers.update(
                result=ledger.request(echo, pool=POOL, request_id="r2")
            )
        )
        thread.start()
        assert wait_until(lambda: state_of(ledger, second) is not None)
        assert state_of(ledger, second) is AllocationState.PENDING
        assert thread.is_alive()  # the slow path waits for the server's lock
    thread.join(30)
    result = answers["result"].allocation
    assert result.state is AllocationState.ACTIVE
    assert result.activated_at != result.requested_at
    assert ledger.pool(POOL).servers["echo"].references == 2
    assert verify(service).clean
