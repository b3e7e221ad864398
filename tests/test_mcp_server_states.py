"""What list_mcp_servers and get_mcp_status say besides `running`, with real
processes: `starting` while a slow server starts, `idle` once no allocation
uses it, `stopped` after the idle stop, and `failed` when a start fails or a
server in use keeps dying. Every process a test starts is killed when it
ends (tests/process_support.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp import Client

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.results import RequestResult
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.mcp_support import call
from tests.process_support import (
    POOL,
    POOL_MCP_FIRST,
    TEST_SERVER,
    is_alive,
    kill_on,
    kinds,
    marking,
    process_events,
    process_ledgers,
    wait_until,
)

pytestmark = pytest.mark.anyio

SLOW = {"command": [*TEST_SERVER, "--delay-seconds", "3"], "idle_timeout_seconds": 60}
ECHO = {"command": TEST_SERVER, "idle_timeout_seconds": 60}
BROKEN = {"command": [*TEST_SERVER, "--crash-at-start"]}
OpenLedger = Callable[..., AllocationService]


@pytest.fixture
def mark(tmp_path: Path) -> Iterator[str]:
    yield from marking(tmp_path)


@pytest.fixture
def open_ledger(
    mark: str, tmp_path: Path, manual_clock: ManualClock
) -> Iterator[OpenLedger]:
    with process_ledgers(mark, tmp_path, manual_clock) as open_:
        yield open_


async def status_of(client: Client, name: str) -> dict[str, Any]:
    """get_mcp_status, checked against the same server in list_mcp_servers
    (read between two equal answers of get_mcp_status, so a change in
    between does not count as a difference)."""
    for _ in range(20):
        before = await call(client, "get_mcp_status", name=name, pool=POOL)
        listed = await call(client, "list_mcp_servers", pool=POOL)
        after = await call(client, "get_mcp_status", name=name, pool=POOL)
        if before == after:
            [same] = [s for s in listed["servers"] if s["name"] == name]
            assert same == after
            return dict(after)
    raise AssertionError(f"the status of {name} kept changing")


async def test_a_server_is_starting_then_running_idle_and_stopped(
    open_ledger: OpenLedger, manual_clock: ManualClock
) -> None:
    service = open_ledger({"slow": SLOW})
    answers: dict[str, RequestResult] = {}

    def request() -> None:
        asked = AllocationRequest(job_id="a", servers=("slow",))
        answers["result"] = service.ledger.request(asked, pool=POOL)

    thread = threading.Thread(target=request)
    try:
        async with Client(stdio_server(service)) as client:
            thread.start()  # once the server is up (its start reconciles)
            seen: list[dict[str, Any]] = []
            with anyio.fail_after(30):
                while not seen or seen[-1]["status"] == "stopped":
                    seen.append(await status_of(client, "slow"))
                    await anyio.sleep(0.05)
            starting = seen[-1]
            assert starting["status"] == "starting"  # its start takes 3 s
            assert starting["port"] == POOL_MCP_FIRST
            assert starting["references"] == 1
            assert starting["pid"] is not None and is_alive(starting["pid"])

            await anyio.to_thread.run_sync(thread.join, 60)
            allocation = answers["result"].allocation
            assert allocation.state is AllocationState.ACTIVE
            running = await status_of(client, "slow")
            assert running["status"] == "running"
            assert running["pid"] == starting["pid"]

            await call(
                client, "release_resources", allocation_id=allocation.allocation_id
            )
            idle = await status_of(client, "slow")
            assert idle["status"] == "idle"
            assert idle["references"] == 0 and idle["idle_since"] is not None
            assert idle["pid"] == running["pid"] and is_alive(idle["pid"])

            manual_clock.advance(61)
            await anyio.to_thread.run_sync(service.ledger.stop_idle_servers)
            stopped = await status_of(client, "slow")
            assert stopped["status"] == "stopped"
            assert stopped["pid"] is None and not is_alive(running["pid"])
            assert stopped["port"] == POOL_MCP_FIRST  # its last one
            assert stopped["references"] == 0
            assert stopped["last_exit"] is not None
    finally:
        if thread.ident is not None:
            thread.join(60)
    assert verify(service).clean


async def test_a_server_whose_start_fails_is_failed(open_ledger: OpenLedger) -> None:
    service = open_ledger({"broken": BROKEN})
    async with Client(stdio_server(service)) as client:
        # In the catalog, never ran: stopped, with no port; not listed.
        never = await call(client, "get_mcp_status", name="broken", pool=POOL)
        assert never["status"] == "stopped" and never["port"] is None
        listed = await call(client, "list_mcp_servers", pool=POOL)
        assert listed["servers"] == []
        result = await call(
            client, "request_resources", job_id="a", mcp_servers=["broken"], pool=POOL
        )
        assert result["status"] == "failed"
        failed = await status_of(client, "broken")
        assert failed["status"] == "failed"
        assert failed["pid"] is None and failed["references"] == 0
        assert failed["port"] == POOL_MCP_FIRST
        assert failed["last_exit"] is not None and failed["last_exit"]["code"] == 2
    assert "HealthFailed" in kinds(process_events(service, "broken"))
    assert verify(service).clean


async def test_a_server_in_use_that_keeps_dying_is_failed(
    open_ledger: OpenLedger,
) -> None:
    service = open_ledger({"echo": ECHO})
    async with Client(stdio_server(service)) as client:
        result = await call(
            client, "request_resources", job_id="a", mcp_servers=["echo"], pool=POOL
        )
        assert result["status"] == "active"
        assert await anyio.to_thread.run_sync(wait_until, kill_on(service, "echo"), 60)
        failed = await status_of(client, "echo")
        assert failed["status"] == "failed"
        assert failed["references"] == 1  # the allocation keeps it
        assert failed["restarts"] >= 3
        assert failed["last_exit"] is not None
        detail = await call(
            client, "get_allocation", allocation_id=result["allocation_id"]
        )
        assert detail["state"] == "active"
        assert detail["mcp_servers"][0]["status"] == "failed"
    assert kinds(process_events(service, "echo"))[-1] == "Failed"
    assert verify(service).clean
