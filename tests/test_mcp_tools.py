"""Every MCP tool and resource through `mcp.Client`, in memory, on a manual clock."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.mcp.tools.specs import TOOLS as TOOL_SPECS
from allocation_ledger.adapters.metrics.instruments import LedgerMetrics
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.actors import SWEEPER_ACTOR
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.pool_settings import MAX_MEMORY_MIB
from allocation_ledger.domain.values import MAX_TTL_SECONDS
from tests.mcp_support import (
    REPO,
    OpenMemory,
    call,
    call_error,
    is_utc_iso,
    max_notification_id,
    original_behaviours,
    text_of,
    unique,
)

pytestmark = pytest.mark.anyio

TOOLS = {
    "request_resources",
    "release_resources",
    "get_capacity",
    "get_allocation",
    "list_allocations",
    "cleanup_expired",
    "renew_allocation",
    "get_allocation_history",
    "set_capacity",
    "get_usage",
    "get_queue",
    "set_quota",
    "set_scheduling",
    "list_mcp_servers",
    "get_mcp_status",
    "await_allocation",
}
READ_ONLY = {
    "get_capacity",
    "get_allocation",
    "list_allocations",
    "get_allocation_history",
    "get_usage",
    "get_queue",
    "list_mcp_servers",
    "get_mcp_status",
    "await_allocation",
}
DESTRUCTIVE = {
    "release_resources",
    "cleanup_expired",
    "set_capacity",
    "set_quota",
    "set_scheduling",
}
NOT_IDEMPOTENT = {"request_resources", "renew_allocation"}
UNKNOWN_ID = "alloc-000000000000"


# -- what the server offers ----------------------------------------------------


async def test_the_tools_have_honest_annotations_and_described_arguments(
    client: Client,
) -> None:
    listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(listed) == TOOLS == set(TOOL_SPECS)
    for name, tool in listed.items():
        hints = tool.annotations
        assert hints is not None
        assert hints.read_only_hint is (name in READ_ONLY), name
        assert hints.destructive_hint is (name in DESTRUCTIVE), name
        assert hints.idempotent_hint is (name not in NOT_IDEMPOTENT), name
        assert hints.open_world_hint is False
        assert tool.description and len(tool.description) > 80, name
        assert tool.output_schema is not None, name
        schema = tool.input_schema
        assert schema["additionalProperties"] is False, name
        for argument, spec in schema.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{argument} has no description"
    request = listed["request_resources"]
    assert set(request.input_schema["required"]) == {"job_id", "mcp_servers"}
    defaults = {
        k: v.get("default") for k, v in request.input_schema["properties"].items()
    }
    assert defaults["workers"] == 0
    assert defaults["priority"] == "normal"
    assert defaults["ttl_seconds"] == 3600
    assert defaults["pool"] == "default"
    assert defaults["dry_run"] is False
    assert defaults["request_id"] is None
    assert defaults["wait"] is False
    assert defaults["max_wait_seconds"] is None
    assert defaults["preempt"] is True
    assert defaults["tenant"] is None
    description = request.description or ""
    assert '"failed"' in description
    assert '"queued"' in description
    assert "preempted" in description
    assert "request_id" in description
    assert "Insufficient workers: requested 10, available 6" in description


async def test_the_tool_reference_documents_every_tool_and_argument(
    client: Client,
) -> None:
    reference = (REPO / "docs" / "tools.md").read_text()
    sections = dict(
        re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", reference, flags=re.M | re.S)
    )
    for tool in (await client.list_tools()).tools:
        assert tool.name in sections, f"docs/tools.md has no section {tool.name}"
        section = sections[tool.name]
        for argument in tool.input_schema.get("properties", {}):
            assert f"`{argument}`" in section, f"{tool.name}.{argument} undocumented"
        assert f'"name": "{tool.name}"' in section, f"{tool.name} has no example"


async def test_the_original_behaviours_end_to_end(client: Client) -> None:
    history = await original_behaviours(client)
    assert {e["actor"] for e in history["events"]} == {"local"}


async def test_defaults_are_the_originals(client: Client) -> None:
    capacity = await call(client, "get_capacity")
    assert capacity["total_cpu"] == 16.0
    assert capacity["total_memory"] == 32768
    assert capacity["total_workers"] == 10
    assert capacity["worker_size"] == {"cpu": 1.0, "memory": 2048, "workers": 1}
    assert capacity["free_mcp_ports"] == 100
    granted = await call(
        client, "request_resources", job_id="j", mcp_servers=["filesystem"]
    )
    assert granted["ttl_seconds"] == 3600
    assert granted["priority"] == "normal"
    assert granted["workers_allocated"] == []
    assert granted["mcp_servers"][0]["port"] == 9000
    created = datetime.fromisoformat(granted["created_at"])
    assert datetime.fromisoformat(granted["expires_at"]) - created == timedelta(hours=1)


# -- refusals ------------------------------------------------------------------


async def test_every_refusal_uses_the_original_wording_and_a_reason(
    client: Client, service: AllocationService
) -> None:
    await call(client, "set_capacity", cpu=2.5, memory=5000, workers=10)
    cpu = await call(client, "request_resources", job_id="j", mcp_servers=[], workers=3)
    assert cpu["error"] == "Insufficient cpu: requested 3.0, available 2.5"
    assert cpu["reason"] == {
        "code": "insufficient_capacity",
        "dimension": "cpu",
        "requested": 3.0,
        "available": 2.5,
    }
    await call(client, "set_capacity", cpu=16)
    memory = await call(
        client, "request_resources", job_id="j", mcp_servers=[], workers=3
    )
    assert memory["error"] == "Insufficient memory: requested 6144, available 5000"
    assert memory["reason"]["dimension"] == "memory"

    for batch in range(4):
        names = [f"s{batch}-{i}" for i in range(25)]
        held = await call(client, "request_resources", job_id="j", mcp_servers=names)
        assert held["status"] == "active"
    ports = await call(
        client, "request_resources", job_id="j", mcp_servers=["one-more", "and-two"]
    )
    assert ports["status"] == "failed"
    assert ports["error"] == "Insufficient mcp_ports: requested 2, available 0"
    assert ports["reason"]["dimension"] == "mcp_ports"

    detail = await call(client, "get_allocation", allocation_id=ports["allocation_id"])
    assert detail["state"] == "failed"
    assert detail["error"] == ports["error"]
    assert detail["resources"] == {
        "cpu_allocated": 0.0,
        "memory_allocated": 0,
        "workers": 0,
    }
    history = await call(
        client, "get_allocation_history", allocation_id=ports["allocation_id"]
    )
    assert [e["event"] for e in history["events"]] == ["requested", "rejected"]
    assert history["events"][1]["changes"]["error"] == ports["error"]

    before = max_notification_id(service)
    released = await call(
        client, "release_resources", allocation_id=ports["allocation_id"]
    )
    assert released["status"] == "failed"
    assert "nothing changed" in released["message"]
    assert max_notification_id(service) == before


async def test_a_request_that_does_not_fit_first_expires_what_is_due(
    service: AllocationService, clock: ManualClock
) -> None:
    # The server sweeps once as it starts: wait for that sweep, so that the
    # lease below is expired by the request, not by a late first sweep.
    metrics = LedgerMetrics(service, TOOL_SPECS)
    async with Client(stdio_server(service, metrics=metrics)) as client:
        with anyio.fail_after(30):
            while not sweeps_run(metrics):
                await anyio.sleep(0.01)
        old = await call(
            client,
            "request_resources",
            job_id="old",
            mcp_servers=[],
            workers=8,
            ttl_seconds=60,
        )
        clock.advance(61)
        new = await call(
            client, "request_resources", job_id="new", mcp_servers=[], workers=8
        )
        assert new["status"] == "active"
        assert new["expired_first"] == [old["allocation_id"]]
        gone = await call(client, "get_allocation", allocation_id=old["allocation_id"])
        assert gone["state"] == "expired"
        assert gone["is_expired"] is True


def sweeps_run(metrics: LedgerMetrics) -> float:
    """How many expiry sweeps the server of `metrics` has finished."""
    value = metrics.registry.get_sample_value(
        "allocation_ledger_background_runs_total",
        {"job": "expiry_sweep", "outcome": "ok"},
    )
    return value or 0.0


# -- retries and dry runs ------------------------------------------------------


async def test_request_id_retries_return_the_same_allocation_and_write_nothing(
    client: Client, service: AllocationService
) -> None:
    arguments: dict[str, Any] = {
        "job_id": "j",
        "mcp_servers": ["github"],
        "workers": 2,
        "request_id": "retry-1",
    }
    first = await call(client, "request_resources", **arguments)
    assert first["request_id"] == "retry-1"
    assert first["replayed"] is False
    before = max_notification_id(service)
    again = await call(client, "request_resources", **arguments)
    assert again["allocation_id"] == first["allocation_id"]
    assert again["replayed"] is True
    assert again["status"] == "active"
    assert max_notification_id(service) == before

    changed = await call_error(client, "request_resources", {**arguments, "workers": 3})
    assert "request_id 'retry-1' was already used" in changed
    assert "workers" in changed
    assert max_notification_id(service) == before

    other_pool_key = await call(
        client, "request_resources", **{**arguments, "job_id": "k", "request_id": "r2"}
    )
    assert other_pool_key["allocation_id"] != first["allocation_id"]

    await call(client, "release_resources", allocation_id=first["allocation_id"])
    after_release = await call(client, "request_resources", **arguments)
    assert after_release["status"] == "released"
    assert after_release["replayed"] is True


async def test_a_dry_run_reserves_and_records_nothing(
    client: Client, service: AllocationService
) -> None:
    await call(client, "get_capacity")
    await call(client, "request_resources", job_id="j", mcp_servers=[], workers=1)
    before = max_notification_id(service)
    fits = await call(
        client,
        "request_resources",
        job_id="j",
        mcp_servers=["filesystem"],
        workers=2,
        dry_run=True,
    )
    assert fits["status"] == "dry_run"
    assert fits["dry_run"] is True
    assert all(w["endpoint"] is None for w in fits["workers_allocated"])
    too_big = await call(
        client,
        "request_resources",
        job_id="j",
        mcp_servers=[],
        workers=10,
        dry_run=True,
    )
    assert too_big["status"] == "failed"
    assert too_big["error"] == "Insufficient workers: requested 10, available 9"
    assert max_notification_id(service) == before
    missing = await call_error(
        client, "get_allocation", {"allocation_id": fits["allocation_id"]}
    )
    assert "not found" in missing


# -- queries -------------------------------------------------------------------


async def test_list_allocations_filters_and_pages(client: Client) -> None:
    made = []
    for job, priority, workers in (
        ("a", "low", 1),
        ("b", "high", 1),
        ("a", "critical", 11),
    ):
        made.append(
            await call(
                client,
                "request_resources",
                job_id=job,
                mcp_servers=[],
                workers=workers,
                priority=priority,
            )
        )
    ids = [m["allocation_id"] for m in made]

    result = await client.call_tool("list_allocations", {})
    everything = json.loads(text_of(result))  # the text is the original JSON list
    assert isinstance(everything, list)
    assert [a["allocation_id"] for a in everything] == ids
    assert set(everything[0]) >= {
        "allocation_id",
        "job_id",
        "state",
        "priority",
        "workers",
        "age_seconds",
        "is_expired",
    }
    assert result.structured_content == {"allocations": everything, "count": 3}

    async def listed(**filters: Any) -> list[str]:
        found = await call(client, "list_allocations", **filters)
        return [a["allocation_id"] for a in found["allocations"]]

    assert await listed(job_id="a") == [ids[0], ids[2]]
    assert await listed(state="failed") == [ids[2]]
    assert await listed(state="active", job_id="a") == [ids[0]]
    assert await listed(priority="high") == [ids[1]]
    assert await listed(pool="default") == ids
    assert await listed(state="expired") == []
    page = await call(client, "list_allocations", limit=2)
    assert [a["allocation_id"] for a in page["allocations"]] == ids[:2]
    rest = await listed(after=page["allocations"][-1]["sequence"])
    assert rest == [ids[2]]


async def test_get_allocation_shows_the_original_shape(
    client: Client, clock: ManualClock
) -> None:
    granted = await call(
        client,
        "request_resources",
        job_id="shape",
        mcp_servers=["github"],
        workers=2,
        metadata={"master": "development"},
    )
    clock.advance(30)
    detail = await call(
        client, "get_allocation", allocation_id=granted["allocation_id"]
    )
    assert set(detail) >= {
        "allocation_id",
        "job_id",
        "state",
        "priority",
        "resources",
        "mcp_servers",
        "workers",
        "timestamps",
        "ttl_seconds",
        "is_expired",
        "metadata",
    }
    assert detail["timestamps"]["age_seconds"] == 30.0
    assert detail["timestamps"]["released_at"] is None
    assert [w["status"] for w in detail["workers"]] == ["active", "active"]
    assert (
        detail["workers"][0]["endpoint"] == granted["workers_allocated"][0]["endpoint"]
    )
    assert detail["mcp_servers"][0]["status"] == "running"
    assert detail["requested_by"] == "local"
    assert "error" not in detail
    assert "reason" not in detail


async def test_unknown_ids_are_tool_errors_that_name_the_id(client: Client) -> None:
    for tool in (
        "get_allocation",
        "release_resources",
        "renew_allocation",
        "get_allocation_history",
        "await_allocation",
    ):
        text = await call_error(client, tool, {"allocation_id": UNKNOWN_ID})
        assert f"allocation '{UNKNOWN_ID}' not found" in text, tool
    text = await call_error(client, "get_capacity", {"pool": "elsewhere"})
    assert "pool 'elsewhere' not found" in text


# -- renewals, expiry, history -------------------------------------------------


async def test_renewal_moves_the_lease_and_refuses_what_is_not_live(
    client: Client, clock: ManualClock
) -> None:
    granted = await call(
        client,
        "request_resources",
        job_id="j",
        mcp_servers=[],
        workers=1,
        ttl_seconds=120,
    )
    allocation_id = granted["allocation_id"]
    clock.advance(100)
    renewed = await call(client, "renew_allocation", allocation_id=allocation_id)
    assert renewed["ttl_seconds"] == 120  # its own ttl again
    assert datetime.fromisoformat(renewed["expires_at"]) == clock.now() + timedelta(
        seconds=120
    )
    assert renewed["renewals"] == 1
    longer = await call(
        client, "renew_allocation", allocation_id=allocation_id, ttl_seconds=3600
    )
    assert datetime.fromisoformat(longer["expires_at"]) == clock.now() + timedelta(
        hours=1
    )

    clock.advance(3601)
    late = await call_error(
        client, "renew_allocation", {"allocation_id": allocation_id}
    )
    assert f"cannot renew allocation '{allocation_id}': it is expired" in late
    detail = await call(client, "get_allocation", allocation_id=allocation_id)
    assert detail["state"] == "expired"
    assert detail["timestamps"]["released_at"] is not None

    other = await call(
        client, "request_resources", job_id="j", mcp_servers=[], workers=1
    )
    await call(client, "release_resources", allocation_id=other["allocation_id"])
    text = await call_error(
        client, "renew_allocation", {"allocation_id": other["allocation_id"]}
    )
    assert "it is released" in text


async def test_cleanup_expired_takes_back_what_ran_out(
    client: Client, clock: ManualClock
) -> None:
    short = await call(
        client,
        "request_resources",
        job_id="j",
        mcp_servers=[],
        workers=3,
        ttl_seconds=60,
    )
    long = await call(
        client,
        "request_resources",
        job_id="j",
        mcp_servers=[],
        workers=2,
        ttl_seconds=600,
    )
    assert (await call(client, "cleanup_expired"))["count"] == 0
    clock.advance(61)
    listed = await call(client, "list_allocations", state="active")
    assert [a["is_expired"] for a in listed["allocations"]] == [True, False]
    cleaned = await call(client, "cleanup_expired")
    assert cleaned == {
        "cleaned_up": [short["allocation_id"]],
        "count": 1,
        "deprovision_errors": [],
    }
    assert (await call(client, "cleanup_expired"))["count"] == 0
    capacity = await call(client, "get_capacity")
    assert capacity["allocated_workers"] == 2
    history = await call(
        client, "get_allocation_history", allocation_id=short["allocation_id"]
    )
    expired = history["events"][-1]
    assert expired["event"] == "expired"
    assert expired["actor"] == "local"  # whoever asked for the cleanup
    assert expired["state"] == "expired"
    assert is_utc_iso(expired["changes"]["expires_at"])
    still = await call(client, "get_allocation", allocation_id=long["allocation_id"])
    assert still["state"] == "active"


# -- capacity ------------------------------------------------------------------


async def test_set_capacity_never_evicts_and_says_when_nothing_changed(
    client: Client,
) -> None:
    held = await call(
        client, "request_resources", job_id="j", mcp_servers=[], workers=6
    )
    lowered = await call(client, "set_capacity", workers=4)
    assert lowered["changed"] is True
    assert lowered["total_workers"] == 4
    assert lowered["total_cpu"] == 16.0  # the others kept
    assert lowered["available_workers"] == -2
    assert lowered["active_allocations"] == 1
    detail = await call(client, "get_allocation", allocation_id=held["allocation_id"])
    assert detail["state"] == "active"
    refused = await call(
        client, "request_resources", job_id="k", mcp_servers=[], workers=1
    )
    assert refused["error"] == "Insufficient workers: requested 1, available 0"
    servers_only = await call(
        client, "request_resources", job_id="k", mcp_servers=["github"]
    )
    assert servers_only["status"] == "active"

    same = await call(client, "set_capacity", workers=4)
    assert same["changed"] is False
    exact = await call(client, "set_capacity", cpu=0.125, memory=100)
    assert exact["total_cpu"] == 0.125
    assert exact["total_memory"] == 100
    resource = await client.read_resource("ledger://pools/default/capacity")
    assert json.loads(resource.contents[0].text)["total_cpu"] == 0.125  # type: ignore[union-attr]


# -- resources -----------------------------------------------------------------


async def test_resources_serve_json(client: Client) -> None:
    templates = await client.list_resource_templates()
    assert {t.uri_template for t in templates.resource_templates} == {
        "ledger://pools/{pool}/capacity",
        "ledger://allocations/{allocation_id}",
        "ledger://allocations/{allocation_id}/history",
    }
    granted = await call(
        client, "request_resources", job_id="j", mcp_servers=["github"], workers=1
    )
    allocation_id = granted["allocation_id"]

    async def read(uri: str) -> Any:
        result = await client.read_resource(uri)
        content = result.contents[0]
        assert content.mime_type == "application/json"
        return json.loads(content.text)  # type: ignore[union-attr]

    capacity = await read("ledger://pools/default/capacity")
    assert capacity == await call(client, "get_capacity")
    detail = await read(f"ledger://allocations/{allocation_id}")
    assert detail == await call(client, "get_allocation", allocation_id=allocation_id)
    history = await read(f"ledger://allocations/{allocation_id}/history")
    assert [e["event"] for e in history["events"]] == ["requested", "activated"]

    for uri in (
        f"ledger://allocations/{UNKNOWN_ID}",
        f"ledger://allocations/{UNKNOWN_ID}/history",
        "ledger://allocations/not-an-id",
        "ledger://pools/elsewhere/capacity",
        "ledger://pools/NOT%20A%20POOL/capacity",
    ):
        with pytest.raises(MCPError) as raised:
            await client.read_resource(uri)
        assert "not found" in str(raised.value), uri


# -- MCP servers and workers: the original's leaks -----------------------------


async def test_worker_ports_are_unique_and_reused_after_release(client: Client) -> None:
    first = await call(
        client, "request_resources", job_id="a", mcp_servers=[], workers=2
    )
    second = await call(
        client, "request_resources", job_id="b", mcp_servers=[], workers=2
    )
    assert [w["port"] for w in first["workers_allocated"]] == [8000, 8001]
    assert [w["port"] for w in second["workers_allocated"]] == [8002, 8003]
    await call(client, "release_resources", allocation_id=first["allocation_id"])
    third = await call(
        client, "request_resources", job_id="c", mcp_servers=[], workers=3
    )
    assert [w["port"] for w in third["workers_allocated"]] == [8000, 8001, 8004]


# -- background work -----------------------------------------------------------


async def _eventually(check: Callable[[], Any], timeout: float = 5.0) -> Any:
    with anyio.fail_after(timeout):
        while True:
            found = await check()
            if found:
                return found
            await anyio.sleep(0.02)


async def test_the_sweeper_expires_a_short_lived_allocation_in_a_running_server(
    open_memory: OpenMemory, clock: ManualClock
) -> None:
    service = open_memory(sweep_interval_seconds=0.05)
    async with Client(stdio_server(service)) as client:
        granted = await call(
            client,
            "request_resources",
            job_id="short",
            mcp_servers=["github"],
            workers=2,
            ttl_seconds=60,
        )
        allocation_id = granted["allocation_id"]
        await anyio.sleep(0.15)  # a few sweeps: nothing is due yet
        detail = await call(client, "get_allocation", allocation_id=allocation_id)
        assert detail["state"] == "active"

        clock.advance(61)

        async def expired() -> bool:
            found = await call(client, "get_allocation", allocation_id=allocation_id)
            return bool(found["state"] == "expired")

        await _eventually(expired)
        history = await call(
            client, "get_allocation_history", allocation_id=allocation_id
        )
        assert history["events"][-1]["actor"] == SWEEPER_ACTOR
        capacity = await call(client, "get_capacity")
        assert capacity["allocated_workers"] == 0
        assert capacity["active_allocations"] == 0


async def test_the_idle_stopper_frees_the_port_of_an_unused_mcp_server(
    open_memory: OpenMemory, clock: ManualClock
) -> None:
    service = open_memory(idle_check_interval_seconds=0.05)
    async with Client(stdio_server(service)) as client:
        granted = await call(
            client, "request_resources", job_id="j", mcp_servers=["github"]
        )
        await call(client, "release_resources", allocation_id=granted["allocation_id"])
        capacity = await call(client, "get_capacity")
        assert [(s["name"], s["status"]) for s in capacity["mcp_servers"]] == [
            ("github", "idle")
        ]
        clock.advance(capacity["idle_timeout_seconds"] + 1)

        async def stopped() -> bool:
            found = await call(client, "get_capacity")
            return not found["running_mcp_servers"]

        await _eventually(stopped)
        assert (await call(client, "get_capacity"))["free_mcp_ports"] == 100


async def test_background_work_survives_errors_and_stops_with_the_server(
    open_memory: OpenMemory,
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = open_memory(sweep_interval_seconds=0.02, idle_check_interval_seconds=0.02)
    real_sweep = service.ledger.expire_due
    calls = {"sweeps": 0, "idle": 0}

    def flaky_sweep(**kwargs: Any) -> Any:
        calls["sweeps"] += 1
        if calls["sweeps"] <= 2:
            raise RuntimeError("the store hiccupped")
        return real_sweep(**kwargs)

    def broken_idle_check(**_: Any) -> Any:
        calls["idle"] += 1
        raise RuntimeError("always broken")

    service.ledger.expire_due = flaky_sweep  # type: ignore[method-assign]
    service.ledger.stop_idle_servers = broken_idle_check  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="allocation_ledger.mcp")
    async with Client(stdio_server(service)) as client:
        granted = await call(
            client, "request_resources", job_id="j", mcp_servers=[], ttl_seconds=60
        )
        clock.advance(61)

        async def expired() -> bool:
            found = await call(
                client, "get_allocation", allocation_id=granted["allocation_id"]
            )
            return bool(found["state"] == "expired")

        await _eventually(expired)
        assert calls["idle"] >= 2  # kept trying after each failure
    failures = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("expiry sweep failed") for m in failures)
    assert any(m.startswith("idle MCP server check failed") for m in failures)

    stopped_at = dict(calls)
    await anyio.sleep(0.1)
    assert calls == stopped_at  # nothing runs once the server has stopped


# -- malformed arguments -------------------------------------------------------

VALID = {"job_id": "job-1", "mcp_servers": ["github"]}
HUGE = "x" * 1_000_000
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("request_resources", {}, "job_id"),
    ("request_resources", {"job_id": "j"}, "mcp_servers"),
    ("request_resources", {**VALID, "job_id": 123}, "job_id"),
    ("request_resources", {**VALID, "job_id": ""}, "job_id"),
    ("request_resources", {**VALID, "job_id": " padded"}, "job_id"),
    ("request_resources", {**VALID, "job_id": HUGE}, "job_id"),
    ("request_resources", {**VALID, "mcp_servers": "github"}, "mcp_servers"),
    ("request_resources", {**VALID, "mcp_servers": ["Git Hub"]}, "mcp_servers"),
    ("request_resources", {**VALID, "mcp_servers": [HUGE]}, "mcp_servers"),
    ("request_resources", {**VALID, "mcp_servers": ["a"] * 33}, "mcp_servers"),
    ("request_resources", {**VALID, "mcp_servers": ["a", "b", "a"]}, "more than once"),
    ("request_resources", {**VALID, "workers": -1}, "workers"),
    ("request_resources", {**VALID, "workers": 10_001}, "workers"),
    ("request_resources", {**VALID, "workers": "4"}, "workers"),
    ("request_resources", {**VALID, "workers": 2.5}, "workers"),
    ("request_resources", {**VALID, "workers": True}, "workers"),
    ("request_resources", {**VALID, "priority": "urgent"}, "priority"),
    ("request_resources", {**VALID, "priority": 1}, "priority"),
    ("request_resources", {**VALID, "ttl_seconds": 59}, "ttl_seconds"),
    ("request_resources", {**VALID, "ttl_seconds": MAX_TTL_SECONDS + 1}, "ttl_seconds"),
    ("request_resources", {**VALID, "ttl_seconds": "3600"}, "ttl_seconds"),
    ("request_resources", {**VALID, "metadata": [1, 2]}, "metadata"),
    ("request_resources", {**VALID, "metadata": {"big": HUGE}}, "metadata"),
    ("request_resources", {**VALID, "request_id": ""}, "request_id"),
    ("request_resources", {**VALID, "request_id": "r" * 201}, "request_id"),
    ("request_resources", {**VALID, "pool": "Not A Pool"}, "pool"),
    ("request_resources", {**VALID, "pool": "elsewhere"}, "pool 'elsewhere' not found"),
    ("request_resources", {**VALID, "dry_run": "yes"}, "dry_run"),
    ("request_resources", {**VALID, "worker": 4}, "worker"),
    ("request_resources", {**VALID, "wait": "yes"}, "wait"),
    ("request_resources", {**VALID, "wait": 1}, "wait"),
    ("request_resources", {**VALID, "max_wait_seconds": 0}, "max_wait_seconds"),
    ("request_resources", {**VALID, "max_wait_seconds": 10**9}, "max_wait_seconds"),
    ("request_resources", {**VALID, "max_wait_seconds": "60"}, "max_wait_seconds"),
    ("request_resources", {**VALID, "max_wait_seconds": 60}, "it needs wait=true"),
    ("request_resources", {**VALID, "metadata": {"é": "x" * 16_380}}, "in UTF-8"),
    ("request_resources", {**VALID, "preempt": "no"}, "preempt"),
    ("request_resources", {**VALID, "tenant": ""}, "tenant"),
    ("request_resources", {**VALID, "tenant": "team a"}, "tenant"),
    ("request_resources", {**VALID, "tenant": HUGE}, "tenant"),
    ("request_resources", {**VALID, "tenant": 7}, "tenant"),
    ("request_resources", {**VALID, "block_seconds": 5}, "needs wait=true"),
    (
        "request_resources",
        {**VALID, "wait": True, "dry_run": True, "block_seconds": 5},
        "no dry_run",
    ),
    (
        "request_resources",
        {**VALID, "wait": True, "block_seconds": 241},
        "block_seconds: must be at most 240",
    ),
    ("request_resources", {**VALID, "wait": True, "block_seconds": 0}, "at least 1"),
    ("request_resources", {**VALID, "wait": True, "block_seconds": 1.5}, "block_"),
    ("release_resources", {}, "allocation_id"),
    ("release_resources", {"allocation_id": 5}, "allocation_id"),
    ("release_resources", {"allocation_id": "alloc-XYZ"}, "allocation_id"),
    ("release_resources", {"allocation_id": HUGE}, "allocation_id"),
    ("release_resources", {"allocation_id": UNKNOWN_ID}, "not found"),
    ("release_resources", {"allocation_id": UNKNOWN_ID, "force": True}, "force"),
    ("get_capacity", {"pool": 5}, "pool"),
    ("get_capacity", {"pool": "Bad Pool!"}, "pool"),
    ("get_capacity", {"pool": HUGE}, "pool"),
    ("get_capacity", {"pool": "elsewhere"}, "not found"),
    ("get_capacity", {"verbose": True}, "verbose"),
    ("get_capacity", {"at": "yesterday"}, "at"),
    (
        "get_capacity",
        {"at": 5},
        "at: must be an ISO 8601 time such as 2026-11-26T09:00:00Z, got 5",
    ),
    (
        "get_usage",
        {"since": 1764547200},
        "since: must be an ISO 8601 time such as 2026-11-26T09:00:00Z, got 1764547200",
    ),
    ("get_usage", {"since": "last week"}, "since"),
    ("get_usage", {"until": [2026]}, "until"),
    (
        "get_usage",
        {"since": "2999-01-01T00:00:00Z"},
        "since must be before now",
    ),
    (
        "get_usage",
        {"since": "2999-01-01T00:00:00Z", "until": "3000-01-01T00:00:00Z"},
        "nothing is billed after now, so a period that starts later holds nothing",
    ),
    (
        "list_allocations",
        {"after": 10**20},
        "after: must be at most 9223372036854775807, got 100000000000000000000",
    ),
    (
        "get_usage",
        {"until": "9999-12-31T23:59:59-12:00"},
        "until: must be a time between 0001-01-01 and 9999-12-31 in UTC",
    ),
    (
        "get_usage",
        {"since": "0001-01-01T00:00:00+14:00"},
        "since: must be a time between 0001-01-01 and 9999-12-31 in UTC",
    ),
    (
        "get_capacity",
        {"at": "9999-12-31T23:59:59-01:00"},
        "at: must be a time between 0001-01-01 and 9999-12-31 in UTC",
    ),
    ("get_usage", {"job_id": HUGE}, "job_id"),
    ("get_usage", {"pool": "Bad Pool!"}, "pool"),
    ("get_usage", {"job": "x"}, "job"),
    ("get_allocation", {}, "allocation_id"),
    ("get_allocation", {"allocation_id": ["alloc-000000000000"]}, "allocation_id"),
    ("get_allocation", {"allocation_id": UNKNOWN_ID}, "not found"),
    ("list_allocations", {"state": "done"}, "state"),
    ("list_allocations", {"state": "waiting"}, "state"),
    ("list_allocations", {"state": 3}, "state"),
    ("list_allocations", {"job_id": HUGE}, "job_id"),
    ("list_allocations", {"priority": "urgent"}, "priority"),
    ("list_allocations", {"pool": "BAD"}, "pool"),
    ("list_allocations", {"after": -1}, "after"),
    ("list_allocations", {"limit": 0}, "limit"),
    ("list_allocations", {"limit": 1001}, "limit"),
    ("list_allocations", {"limit": "10"}, "limit"),
    ("list_allocations", {"status": "active"}, "status"),
    ("cleanup_expired", {"force": True}, "force"),
    ("renew_allocation", {}, "allocation_id"),
    (
        "renew_allocation",
        {"allocation_id": UNKNOWN_ID, "ttl_seconds": 59},
        "ttl_seconds",
    ),
    (
        "renew_allocation",
        {"allocation_id": UNKNOWN_ID, "ttl_seconds": "60"},
        "ttl_seconds",
    ),
    ("renew_allocation", {"allocation_id": "nope"}, "allocation_id"),
    ("renew_allocation", {"allocation_id": UNKNOWN_ID}, "not found"),
    ("get_allocation_history", {}, "allocation_id"),
    ("get_allocation_history", {"allocation_id": "alloc-"}, "allocation_id"),
    ("get_allocation_history", {"allocation_id": UNKNOWN_ID}, "not found"),
    ("set_capacity", {}, "at least one of cpu, memory and workers"),
    ("set_capacity", {"cpu": "16"}, "cpu"),
    ("set_capacity", {"cpu": -1}, "cpu"),
    ("set_capacity", {"cpu": 1e12}, "cpu"),
    ("set_capacity", {"cpu": 0.0001}, "finer than a millicore"),
    ("set_capacity", {"cpu": 2.0005}, "finer than a millicore"),
    ("set_capacity", {"memory": 1.5}, "memory"),
    ("set_capacity", {"memory": -1}, "memory"),
    ("set_capacity", {"memory": MAX_MEMORY_MIB + 1}, "memory"),
    ("set_capacity", {"workers": 1001}, "workers"),
    ("set_capacity", {"workers": True}, "workers"),
    ("set_capacity", {"workers": 5, "pool": "Bad Pool"}, "pool"),
    ("set_capacity", {"workers": 5, "pool": "elsewhere"}, "pool 'elsewhere' not found"),
    ("set_capacity", {"workers": 5, "total": 9}, "total"),
    ("get_queue", {"pool": "Bad Pool!"}, "pool"),
    ("get_queue", {"pool": 5}, "pool"),
    ("get_queue", {"pool": "elsewhere"}, "pool 'elsewhere' not found"),
    ("get_queue", {"state": "queued"}, "state"),
    ("set_quota", {}, "tenant"),
    ("set_quota", {"tenant": "team-a"}, "at least one of cpu, memory and workers"),
    ("set_quota", {"tenant": "team a", "workers": 2}, "tenant"),
    ("set_quota", {"tenant": HUGE, "workers": 2}, "tenant"),
    ("set_quota", {"tenant": "team-a", "workers": -1}, "workers"),
    ("set_quota", {"tenant": "team-a", "workers": "2"}, "workers"),
    ("set_quota", {"tenant": "team-a", "cpu": 0.0001}, "finer than a millicore"),
    ("set_quota", {"tenant": "team-a", "memory": 1.5}, "memory"),
    ("set_quota", {"tenant": "team-a", "workers": 2, "clear": True}, "not both"),
    ("set_quota", {"tenant": "team-a", "clear": "yes"}, "clear"),
    (
        "set_quota",
        {"tenant": "team-a", "workers": 2, "pool": "elsewhere"},
        "pool 'elsewhere' not found",
    ),
    ("set_quota", {"tenant": "team-a", "workers": 2, "user": "x"}, "user"),
    ("set_scheduling", {}, "at least one of queue_policy"),
    ("set_scheduling", {"queue_policy": "fifo"}, "queue_policy"),
    ("set_scheduling", {"aging_seconds": 0}, "aging_seconds"),
    ("set_scheduling", {"aging_seconds": "600"}, "aging_seconds"),
    ("set_scheduling", {"preemption": {"urgent": ["low"]}}, "preemption"),
    ("set_scheduling", {"preemption": {"high": "low"}}, "preemption"),
    ("set_scheduling", {"preemption": {"normal": ["high"]}}, "strictly lower"),
    ("set_scheduling", {"preemption": {"low": ["low"]}}, "strictly lower"),
    (
        "set_scheduling",
        {"preemption": {"critical": ["low", "normal", "low"]}},
        "preemption.critical names low more than once",
    ),
    (
        "set_scheduling",
        {"queue_policy": "backfill", "pool": "elsewhere"},
        "pool 'elsewhere' not found",
    ),
    ("set_scheduling", {"policy": "strict"}, "policy"),
    ("list_mcp_servers", {"pool": "elsewhere"}, "pool 'elsewhere' not found"),
    ("list_mcp_servers", {"pools": "default"}, "pools"),
    ("await_allocation", {}, "allocation_id"),
    ("await_allocation", {"allocation_id": "alloc-"}, "allocation_id"),
    ("await_allocation", {"allocation_id": UNKNOWN_ID}, "not found"),
    (
        "await_allocation",
        {"allocation_id": UNKNOWN_ID, "block_seconds": 241},
        "block_seconds: must be at most 240",
    ),
    ("await_allocation", {"allocation_id": UNKNOWN_ID, "wait": True}, "wait"),
    ("get_mcp_status", {}, "name"),
    ("get_mcp_status", {"name": "nope"}, 'unknown MCP server "nope"'),
    (
        "get_mcp_status",
        {"name": "github", "pool": "elsewhere"},
        "pool 'elsewhere' not found",
    ),
]


def test_every_tool_has_malformed_cases() -> None:
    assert {tool for tool, _, _ in MALFORMED} == TOOLS


async def test_malformed_arguments_are_clear_tool_errors_that_write_nothing(
    client: Client, service: AllocationService
) -> None:
    await call(
        client, "request_resources", job_id="j", mcp_servers=["github"], workers=1
    )
    before = max_notification_id(service)
    assert before > 0
    for tool, arguments, expected in MALFORMED:
        text = await call_error(client, tool, arguments)
        shown = {k: (v if v is not HUGE else "<huge>") for k, v in arguments.items()}
        assert expected in text, f"{tool}({shown}): {text[:300]}"
        assert len(text) < 5000, f"{tool}({shown}) echoes too much"
        assert max_notification_id(service) == before, f"{tool}({shown}) wrote"
    capacity = await call(client, "get_capacity")
    assert capacity["allocated_workers"] == 1
    assert capacity["total_workers"] == 10


async def test_a_request_id_is_scoped_to_its_pool(client: Client) -> None:
    key = unique("req")
    first = await call(
        client, "request_resources", job_id="j", mcp_servers=[], request_id=key
    )
    assert first["allocation_id"].startswith("alloc-")
    text = await call_error(
        client,
        "request_resources",
        {"job_id": "j", "mcp_servers": [], "request_id": key, "pool": "other"},
    )
    assert "pool 'other' not found" in text


async def test_list_mcp_servers_and_get_mcp_status_show_the_pools_servers(
    client: Client,
) -> None:
    await call(client, "request_resources", job_id="j", mcp_servers=["github"])
    listed = await call(client, "list_mcp_servers")
    assert listed["provisioner"] == "endpoints"
    [github] = [s for s in listed["servers"] if s["name"] == "github"]
    assert github["pool"] == "default"
    assert github["status"] == "running"
    assert github["references"] == 1
    assert github["endpoint"] == f"http://localhost:{github['port']}"
    assert github["pid"] is None
    status = await call(client, "get_mcp_status", name="github")
    assert status == github
