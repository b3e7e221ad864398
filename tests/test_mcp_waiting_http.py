"""Requests that wait in the call, over streamable HTTP with real server
processes: granted when another agent (or another server on the same
database) releases, timed out by their own deadline, cancelled, and a
hundred of them waiting at once without slowing other calls down."""

from __future__ import annotations

import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.mcp_support import call, http_client, http_server_process
from tests.test_mcp_waiting import Blocked, blocking_request, until

pytestmark = pytest.mark.anyio

BLOCKED_CALLS = 100
SAMPLES = 150
"""get_capacity calls timed per phase (after warming up)."""
SLOWDOWN_BOUND = 1.5
"""get_capacity's median while 100 calls block, at most this times its
median unloaded (issue 15)."""


@pytest.fixture
def served(tmp_path: Path) -> Any:
    with http_server_process(tmp_path / "ledger.db", "--no-auth") as (base, _):
        yield base + "/mcp"


@asynccontextmanager
async def many_calls_client(url: str) -> AsyncIterator[Client]:
    """One MCP session whose HTTP client may hold any number of requests
    open at once (each blocked call holds one)."""
    async with (
        httpx2.AsyncClient(
            timeout=300, limits=httpx2.Limits(max_connections=None)
        ) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


async def test_a_blocked_request_is_granted_when_another_agent_releases(
    served: str,
) -> None:
    async with http_client(served) as holder, http_client(served) as waiter:
        await call(holder, "set_capacity", workers=4)
        first = await call(
            holder, "request_resources", job_id="a", mcp_servers=[], workers=2
        )
        second = await call(
            holder, "request_resources", job_id="b", mcp_servers=[], workers=2
        )
        await call(
            holder,
            "request_resources",
            job_id="ahead",
            mcp_servers=[],
            workers=2,
            wait=True,
        )
        blocked = Blocked()
        async with anyio.create_task_group() as group:
            group.start_soon(
                blocked.run, waiter, "request_resources", blocking_request("w", 2)
            )
            await until(lambda: len(blocked.progress) == 1, 10)
            await call(
                holder, "release_resources", allocation_id=first["allocation_id"]
            )
            await until(lambda: len(blocked.progress) == 2, 10)
            released_at = time.monotonic()
            await call(
                holder, "release_resources", allocation_id=second["allocation_id"]
            )
        assert blocked.progress == [
            (
                1.0,
                None,
                "queued at position 2 of 2 in pool default, "
                "waiting for 2 workers (0 free)",
            ),
            (
                2.0,
                None,
                "queued at position 1 of 1 in pool default, "
                "waiting for 2 workers (0 free)",
            ),
        ]
        assert blocked.result is not None, blocked.error
        assert blocked.result["status"] == "active"
        assert len(blocked.result["workers_allocated"]) == 2
        assert blocked.returned_at is not None
        assert blocked.returned_at - released_at < 2


async def test_a_release_on_another_server_of_the_database_ends_the_wait(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    with (
        http_server_process(database, "--no-auth") as (here, _),
        http_server_process(database, "--no-auth") as (there, _),
    ):
        async with (
            http_client(here + "/mcp") as waiter,
            http_client(there + "/mcp") as holder,
        ):
            held = await call(
                holder, "request_resources", job_id="h", mcp_servers=[], workers=10
            )
            blocked = Blocked()
            async with anyio.create_task_group() as group:
                group.start_soon(
                    blocked.run, waiter, "request_resources", blocking_request("w", 1)
                )
                await until(lambda: len(blocked.progress) == 1, 10)
                released_at = time.monotonic()
                await call(
                    holder, "release_resources", allocation_id=held["allocation_id"]
                )
            assert blocked.result is not None, blocked.error
            assert blocked.result["status"] == "active"
            assert blocked.returned_at is not None
            assert blocked.returned_at - released_at < 2


async def test_a_blocked_request_fails_at_its_queue_deadline(served: str) -> None:
    async with http_client(served) as client:
        await call(client, "request_resources", job_id="h", mcp_servers=[], workers=10)
        began = time.monotonic()
        result = await call(
            client,
            "request_resources",
            **blocking_request("impatient", 1, max_wait_seconds=1),
        )
        # No sweep runs for minutes: the waiting call times itself out.
        assert 1 <= time.monotonic() - began < 10
        assert result["status"] == "failed"
        assert result["reason"]["code"] == "queue_timeout"
        detail = await call(
            client, "get_allocation", allocation_id=result["allocation_id"]
        )
        assert detail["state"] == "failed"


async def test_a_cancelled_call_leaves_the_request_queued(served: str) -> None:
    async with http_client(served) as client:
        held = await call(
            client, "request_resources", job_id="h", mcp_servers=[], workers=10
        )
        blocked = Blocked()
        with anyio.move_on_after(1):
            await blocked.run(
                client, "request_resources", blocking_request("patient", 1)
            )
        assert blocked.result is None
        assert len(blocked.progress) == 1
        queued = await call(client, "list_allocations", state="queued")
        [allocation] = queued["allocations"]
        detail = await call(
            client, "get_allocation", allocation_id=allocation["allocation_id"]
        )
        assert detail["state"] == "queued"
        await call(client, "release_resources", allocation_id=held["allocation_id"])
        detail = await call(
            client, "get_allocation", allocation_id=allocation["allocation_id"]
        )
        assert detail["state"] == "active"


async def p50_of_get_capacity(client: Client, samples: int = SAMPLES) -> list[float]:
    """The seconds each of `samples` get_capacity calls took, one at a time."""
    took: list[float] = []
    for _ in range(samples):
        began = time.perf_counter()
        await call(client, "get_capacity")
        took.append(time.perf_counter() - began)
    return took


async def test_a_hundred_blocked_calls_leave_other_calls_as_fast(served: str) -> None:
    async with http_client(served) as measurer, many_calls_client(served) as agents:
        await call(measurer, "set_capacity", workers=10, cpu=200, memory=409600)
        await call(
            measurer, "request_resources", job_id="h", mcp_servers=[], workers=10
        )
        await p50_of_get_capacity(measurer, 30)  # warm up
        before = await p50_of_get_capacity(measurer)

        calls = [Blocked() for _ in range(BLOCKED_CALLS)]
        async with anyio.create_task_group() as group:
            for number, blocked in enumerate(calls):
                group.start_soon(
                    blocked.run,
                    agents,
                    "request_resources",
                    {**blocking_request(f"agent-{number}", 1), "block_seconds": 240},
                )
            # Each call blocks once it has told its first progress.
            await until(lambda: all(b.progress for b in calls), 60)
            queue = await call(measurer, "get_queue")
            assert queue["count"] == BLOCKED_CALLS
            during = await p50_of_get_capacity(measurer)
            assert all(b.result is None and b.error is None for b in calls)
            granted_at = time.monotonic()
            await call(measurer, "set_capacity", workers=10 + BLOCKED_CALLS)
        assert all(b.result is not None for b in calls), [b.error for b in calls]
        assert {b.result["status"] for b in calls if b.result} == {"active"}
        granted_in = max(b.returned_at or 0 for b in calls) - granted_at
        assert granted_in < 30
        after = await p50_of_get_capacity(measurer)

    unloaded = statistics.median(before + after)
    loaded = statistics.median(during)
    print(  # the figures, for docs/performance.md (pytest -s)
        f"get_capacity p50: {statistics.median(before) * 1000:.2f} ms before, "
        f"{loaded * 1000:.2f} ms with {BLOCKED_CALLS} blocked calls, "
        f"{statistics.median(after) * 1000:.2f} ms after; all {BLOCKED_CALLS} "
        f"answered {granted_in:.2f} s after the grant"
    )
    assert loaded <= SLOWDOWN_BOUND * unloaded, (
        f"get_capacity p50 {loaded * 1000:.1f} ms with {BLOCKED_CALLS} blocked "
        f"calls, {unloaded * 1000:.1f} ms without"
    )
