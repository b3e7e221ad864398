"""Point-in-time capacity and usage accounting through MCP."""

from __future__ import annotations

from datetime import timedelta

import pytest
from mcp import Client

from allocation_ledger.domain.clock import ManualClock
from tests.mcp_support import call

pytestmark = pytest.mark.anyio


async def test_capacity_at_a_past_moment(client: Client, clock: ManualClock) -> None:
    start = clock.now()
    made = await call(
        client, "request_resources", job_id="job-a", mcp_servers=["github"], workers=3
    )
    clock.advance(100)
    await call(client, "release_resources", allocation_id=made["allocation_id"])

    then = await call(
        client, "get_capacity", at=(start + timedelta(seconds=50)).isoformat()
    )
    assert then["allocated_workers"] == 3
    assert then["allocated_cpu"] == 3.0
    assert then["running_mcp_servers"] == ["github"]
    now = await call(client, "get_capacity")
    assert now["allocated_workers"] == 0

    before = await client.call_tool(
        "get_capacity", {"at": (start - timedelta(days=1)).isoformat()}
    )
    assert before.is_error
    assert "did not exist" in str(before.content)


async def test_usage_per_job_over_a_period(client: Client, clock: ManualClock) -> None:
    start = clock.now()
    made = await call(
        client, "request_resources", job_id="job-a", mcp_servers=["github"], workers=2
    )
    clock.advance(300)
    await call(client, "release_resources", allocation_id=made["allocation_id"])
    await call(client, "request_resources", job_id="job-b", mcp_servers=[], workers=20)

    usage = await call(client, "get_usage", job_id="job-a")
    assert usage["count"] == 1
    [row] = usage["usage"]
    assert row == {
        "job_id": "job-a",
        "pool": "default",
        "cpu_core_seconds": 600.0,
        "memory_mb_seconds": 2 * 2048 * 300.0,
        "worker_seconds": 600.0,
        "mcp_server_seconds": 300.0,
        "allocations": {"released": 1},
    }
    window = await call(
        client,
        "get_usage",
        since=(start + timedelta(seconds=100)).isoformat(),
        until=(start + timedelta(seconds=200)).isoformat(),
    )
    rows = {r["job_id"]: r for r in window["usage"]}
    assert rows["job-a"]["cpu_core_seconds"] == 200.0
    assert "job-b" not in rows  # requested after the period

    backwards = await client.call_tool(
        "get_usage",
        {"since": start.isoformat(), "until": (start - timedelta(1)).isoformat()},
    )
    assert backwards.is_error
    assert "since must be before until" in str(backwards.content)

    unknown = await client.call_tool("get_usage", {"pool": "nope"})
    assert unknown.is_error
    assert "pool 'nope' not found" in str(unknown.content)
