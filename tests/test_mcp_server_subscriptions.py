"""What an allocation's subscribers hear when one of its MCP servers' real
processes changes: `mcp_server_changed`, with the server's status now in
get_mcp_status' words (and its endpoint, and how its last process ended
when it is down), matching what get_mcp_status and get_allocation say at
that moment; docs/tools.md, "Subscriptions". Every process a test starts
is killed when it ends (tests/process_support.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.mcp_support import call
from tests.process_support import (
    POOL,
    TEST_SERVER,
    OpenProcessLedger,
    kill_on,
    marking,
    process_ledgers,
    request_in_thread,
    wait_until,
)
from tests.subscription_support import (
    LEGACY_SUBSCRIBE,
    SERVER,
    SERVER_ENDPOINT,
    SERVER_LAST_EXIT,
    SERVER_STATUS,
    STATE,
    Told,
    allocation_uri,
)

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings(LEGACY_SUBSCRIBE)]

ECHO = {"command": TEST_SERVER, "idle_timeout_seconds": 60}
"""A real MCP server process (tests/mcp_test_server.py)."""
SLOW = {"command": [*TEST_SERVER, "--delay-seconds", "3"], "idle_timeout_seconds": 60}
"""The same, answering MCP 3 s after it starts."""


@pytest.fixture
def open_ledger(
    tmp_path: Path, manual_clock: ManualClock
) -> Iterator[OpenProcessLedger]:
    """Ledgers with the process provisioner on a SQLite file."""
    for mark in marking(tmp_path):
        with process_ledgers(mark, tmp_path, manual_clock) as open_:
            yield open_


async def test_an_allocations_subscribers_hear_what_its_mcp_server_is_now(
    open_ledger: OpenProcessLedger,
) -> None:
    """A real server process of an active allocation is killed: its
    subscribers hear `mcp_server_changed` with the server's status now, in
    get_mcp_status' words, matching what get_mcp_status and get_allocation
    say at that moment: `running` once it was restarted; `failed`, with how
    its last process ended, once it died too often. An allocation without
    servers hears nothing of it."""
    service = open_ledger({"echo": ECHO})
    told = Told()
    async with (
        Client(stdio_server(service), message_handler=told) as client,
        anyio.create_task_group() as group,
    ):
        made = await call(
            client, "request_resources", job_id="job", mcp_servers=["echo"], pool=POOL
        )
        assert made["status"] == "active"
        other = await call(
            client, "request_resources", job_id="none", mcp_servers=[], pool=POOL
        )
        uri = allocation_uri(made["allocation_id"])
        opened = anyio.Event()

        async def hold() -> None:
            uris = [uri, allocation_uri(other["allocation_id"])]
            async with client.listen(resource_subscriptions=uris) as stream:
                opened.set()
                async for _ in stream:
                    pass

        group.start_soon(hold)
        await opened.wait()
        # Every change before now told (the feed reads the log in order).
        await call(client, "renew_allocation", allocation_id=made["allocation_id"])
        await told.wait_for(uri, "renewed")
        killed = await status_now(client, made["allocation_id"])
        os.killpg(killed["pid"], signal.SIGKILL)

        running = {SERVER_STATUS: "running"}
        back = await told.wait_for(
            uri,
            "mcp_server_changed",
            where=running,
            after=len(told.updates),
            timeout=30,
        )
        now = await status_now(client, made["allocation_id"])
        assert now["status"] == now["in_allocation"] == "running"
        assert now["pid"] != killed["pid"]  # restarted
        assert back[SERVER] == "echo" and back[STATE] == "active"
        assert (
            back[SERVER_ENDPOINT]
            == now["endpoint"]
            == made["mcp_servers"][0]["endpoint"]
        )
        assert SERVER_LAST_EXIT not in back

        mark = len(told.updates)
        assert await anyio.to_thread.run_sync(wait_until, kill_on(service, "echo"), 60)
        failed = await told.wait_for(
            uri, "mcp_server_changed", where={SERVER_STATUS: "failed"}, after=mark
        )
        now = await status_now(client, made["allocation_id"])
        assert now["status"] == now["in_allocation"] == "failed"
        assert failed[SERVER_ENDPOINT] == now["endpoint"]
        ended = {k: v for k, v in now["last_exit"].items() if v is not None}
        assert failed[SERVER_LAST_EXIT] == ended
        assert ended["signal"] == signal.SIGKILL

        said = {m[SERVER_STATUS] for u, m in told.updates if SERVER in m}
        assert said <= {"starting", "running", "failed"}
        assert told.uris() == {uri}  # not the allocation without servers
        group.cancel_scope.cancel()


async def test_a_pending_allocations_subscribers_hear_its_mcp_server_start(
    open_ledger: OpenProcessLedger,
) -> None:
    """A request whose server takes 3 s to start waits pending; its
    subscriber hears the server `running` (what get_mcp_status says then,
    at the same endpoint), and the allocation activated."""
    service = open_ledger({"slow": SLOW})
    told = Told()
    async with Client(
        stdio_server(service), message_handler=told, mode="legacy"
    ) as client:
        request = AllocationRequest(job_id="slow-start", servers=("slow",))
        thread, answers, allocation_id = request_in_thread(service, request)
        try:
            uri = allocation_uri(allocation_id)
            with anyio.fail_after(10):  # once recorded (pending)
                while True:
                    try:
                        await client.subscribe_resource(uri)
                        break
                    except MCPError:
                        await anyio.sleep(0.05)
            running = {SERVER_STATUS: "running"}
            started = await told.wait_for(
                uri, "mcp_server_changed", where=running, timeout=30
            )
            status = await call(client, "get_mcp_status", name="slow", pool=POOL)
            assert status["status"] == "running"
            assert started[SERVER] == "slow"
            assert started[SERVER_ENDPOINT] == status["endpoint"]
            await told.wait_for(uri, "activated", timeout=30)
        finally:
            await anyio.to_thread.run_sync(thread.join, 60)
    assert answers["result"].allocation.state is AllocationState.ACTIVE


async def status_now(client: Client, allocation_id: str) -> dict[str, Any]:
    """get_mcp_status of `echo`, with `in_allocation`: the status
    get_allocation gives it in the allocation (the same endpoint)."""
    status = await call(client, "get_mcp_status", name="echo", pool=POOL)
    detail = await call(client, "get_allocation", allocation_id=allocation_id)
    [server] = detail["mcp_servers"]
    assert server["endpoint"] == status["endpoint"]
    return {**status, "in_allocation": server["status"]}
