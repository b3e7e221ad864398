"""Preemption across tenants over HTTP: a real server, the tokens of two
tenants and an admin, the MCP tools only (docs/scheduling.md, "Preemption
across tenants").

Tenant B's `critical` does not preempt tenant A's `low` while A is within its
quota (refused or queued, with the reason), does once A holds more than its
quota; with `any` it does; with `never` it never does, not even for an admin.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.mcp_support import call, http_client, http_server_process

pytestmark = pytest.mark.anyio

A = "team-a-writes-low-0123456789"
B = "team-b-asks-critical-0123456789"
OPS = "ops-admin-of-the-pool-0123456789"
TOKENS = [
    {"subject": "a-agent", "tenant": "team-a", "scopes": ["write"], "token": A},
    {"subject": "b-agent", "tenant": "team-b", "scopes": ["write"], "token": B},
    {"subject": "ops", "scopes": ["admin"], "token": OPS},  # tenant: "ops"
]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    with http_server_process(
        tmp_path / "ledger.db", ALLOCATION_LEDGER_TOKENS=json.dumps(TOKENS)
    ) as (base, _):
        yield base + "/mcp"


async def request(
    client: Client, job_id: str, workers: int, priority: str, **more: Any
) -> dict[str, Any]:
    return await call(
        client,
        "request_resources",
        job_id=job_id,
        mcp_servers=[],
        workers=workers,
        priority=priority,
        **more,
    )


async def test_critical_takes_another_tenants_capacity_only_as_the_pool_allows(
    url: str,
) -> None:
    async with AsyncExitStack() as stack:
        a, b, ops = [
            await stack.enter_async_context(http_client(url, token))
            for token in (A, B, OPS)
        ]
        await call(ops, "set_capacity", workers=4)
        capacity = await call(ops, "get_capacity")
        assert capacity["cross_tenant_preemption"] == "over_quota"  # the default
        batch = await request(a, "batch", 4, "low")
        assert batch["status"] == "active"

        # over_quota, A without a quota: B's critical preempts nobody.
        refused = await request(b, "hotfix", 1, "critical")
        assert refused["status"] == "failed"
        assert refused["preempted"] == []
        assert refused["reason"] == {
            "code": "insufficient_capacity",
            "dimension": "workers",
            "requested": 1,
            "available": 0,
            "preemption": "other_tenants_within_quota",
        }
        assert refused["error"].startswith("Insufficient workers: requested 1")
        assert "other tenants' allocations" in refused["error"]
        assert "within their quota" in refused["error"]
        queued = await request(b, "hotfix-waits", 1, "critical", wait=True)
        assert queued["status"] == "queued"
        assert queued["waiting_for"]["preemption"] == "other_tenants_within_quota"
        queue = await call(b, "get_queue")
        assert queue["cross_tenant_preemption"] == "over_quota"
        assert [e["job_id"] for e in queue["queue"]] == ["hotfix-waits"]
        await call(b, "release_resources", allocation_id=queued["allocation_id"])

        # A within a quota (4 of 4): still nobody.
        await call(ops, "set_quota", tenant="team-a", workers=4)
        again = await request(b, "hotfix-again", 1, "critical")
        assert again["status"] == "failed"
        assert again["reason"]["preemption"] == "other_tenants_within_quota"

        # A over its quota (holds 4, may hold 3): B's critical preempts it.
        await call(ops, "set_quota", tenant="team-a", workers=3)
        taken = await request(b, "hotfix-now", 1, "critical")
        assert taken["status"] == "active"
        assert taken["preempted"] == []  # B does not see A's allocations
        lost = await call(a, "get_allocation", allocation_id=batch["allocation_id"])
        assert lost["state"] == "preempted"
        assert "preempted_by" not in lost  # by B's allocation: not A's to see

        # any: priorities compare across tenants, A within its quota or not.
        changed = await call(ops, "set_scheduling", cross_tenant_preemption="any")
        assert changed["cross_tenant_preemption"] == "any"
        assert changed["changed"] is True
        assert changed["preemption"] == {"critical": ["low", "normal"], "high": ["low"]}
        second = await request(a, "batch-2", 3, "low")  # 3 of its 3: within
        assert second["status"] == "active"
        capacity = await call(ops, "get_capacity")
        assert capacity["cross_tenant_preemption"] == "any"
        assert capacity["available_workers"] == 0
        taken = await request(b, "hotfix-any", 1, "critical")
        assert taken["status"] == "active"
        lost = await call(a, "get_allocation", allocation_id=second["allocation_id"])
        assert lost["state"] == "preempted"
        assert "preempted_by" not in lost  # by B's allocation: not A's to see

        # never: not even a tenant over its quota, not even for an admin.
        never = await call(ops, "set_scheduling", cross_tenant_preemption="never")
        assert never["cross_tenant_preemption"] == "never"
        assert never["queue_policy"] == "strict"  # the rest is kept
        third = await request(a, "batch-3", 2, "low")
        assert third["status"] == "active"
        await call(ops, "set_quota", tenant="team-a", workers=1)  # over: 2 of 1
        for client, job in ((b, "hotfix-never"), (ops, "ops-never")):
            refused = await request(client, job, 1, "critical")
            assert refused["status"] == "failed"
            assert refused["reason"]["preemption"] == "other_tenants_never_preempted"
            assert "never preempts another tenant's" in refused["error"]
        kept = await call(a, "get_allocation", allocation_id=third["allocation_id"])
        assert kept["state"] == "active"

        # Within one tenant, priorities still decide: A's critical takes A's low.
        await call(ops, "set_quota", tenant="team-a", clear=True)
        own = await request(a, "a-urgent", 1, "critical")
        assert own["status"] == "active"
        assert own["preempted"] == [third["allocation_id"]]
