"""Tenants over HTTP: a real server with the tokens of two tenants and an
admin, the local caller over stdio on the same file, and a server without
authentication. Each rule of docs/tools.md, "Tenants"."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from tests.mcp_support import (
    call,
    call_error,
    http_client,
    http_server_process,
    max_notification_id,
    sqlite_service,
    stdio_params,
    text_of,
)

pytestmark = pytest.mark.anyio

A_ONE = "team-a-agent-one-0123456789"
A_TWO = "team-a-agent-two-0123456789"
A_BOARD = "team-a-board-reader-0123456789"
BOB = "bob-writes-alone-0123456789"
OPS = "ops-admin-sees-all-0123456789"
TOKENS = [
    {"subject": "a-agent-1", "tenant": "team-a", "scopes": ["write"], "token": A_ONE},
    {"subject": "a-agent-2", "tenant": "team-a", "scopes": ["write"], "token": A_TWO},
    {"subject": "a-board", "tenant": "team-a", "scopes": ["read"], "token": A_BOARD},
    {"subject": "bob", "scopes": ["write"], "token": BOB},  # tenant: "bob"
    {"subject": "ops", "scopes": ["admin"], "token": OPS},  # tenant: "ops"
]
UNKNOWN = "alloc-0123456789ab"
"""An allocation id nobody has."""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A server of its own for each test: its MCP URL and its SQLite file."""
    database = tmp_path / "ledger.db"
    with http_server_process(database, ALLOCATION_LEDGER_TOKENS=json.dumps(TOKENS)) as (
        base,
        _,
    ):
        yield base + "/mcp", database


@asynccontextmanager
async def connected(url: str, *tokens: str) -> AsyncIterator[list[Client]]:
    """One MCP client over HTTP per token."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(http_client(url, t)) for t in tokens]


def written(database: Path) -> int:
    with sqlite_service(database) as service:
        return max_notification_id(service)


def answer(result: CallToolResult, allocation_id: str) -> str:
    """The whole answer to a call, with the allocation id it was about blanked
    out: two answers compare equal only if they differ in nothing else."""
    dumped = json.dumps(result.model_dump(mode="json"), sort_keys=True)
    return dumped.replace(allocation_id, "<id>")


async def request(client: Client, job_id: str, **arguments: Any) -> dict[str, Any]:
    return await call(
        client, "request_resources", job_id=job_id, mcp_servers=[], **arguments
    )


async def listed(client: Client, **filters: Any) -> set[str]:
    found = await call(client, "list_allocations", **filters)
    return {a["allocation_id"] for a in found["allocations"]}


# -- another tenant's allocation does not exist --------------------------------


async def test_another_tenants_allocation_answers_exactly_as_one_that_does_not_exist(
    served: tuple[str, Path],
) -> None:
    url, database = served
    async with connected(url, A_ONE, BOB) as (alice, bob):
        held = await request(alice, "a-job", workers=1)
        theirs = held["allocation_id"]
        before = written(database)
        for tool, extra in (
            ("get_allocation", {}),
            ("get_allocation_history", {}),
            ("release_resources", {}),
            ("renew_allocation", {}),
            ("renew_allocation", {"ttl_seconds": 2_592_000}),
        ):
            foreign = await bob.call_tool(tool, {"allocation_id": theirs, **extra})
            missing = await bob.call_tool(tool, {"allocation_id": UNKNOWN, **extra})
            assert foreign.is_error, tool
            assert f"allocation '{theirs}' not found" in text_of(foreign)
            assert answer(foreign, theirs) == answer(missing, UNKNOWN), tool
        for suffix in ("", "/history"):
            with pytest.raises(MCPError) as foreign_error:
                await bob.read_resource(f"ledger://allocations/{theirs}{suffix}")
            with pytest.raises(MCPError) as missing_error:
                await bob.read_resource(f"ledger://allocations/{UNKNOWN}{suffix}")
            assert foreign_error.value.code == missing_error.value.code
            assert foreign_error.value.message.replace(theirs, "<id>") == (
                missing_error.value.message.replace(UNKNOWN, "<id>")
            )
        assert written(database) == before  # neither released nor renewed
        after = await call(alice, "get_allocation", allocation_id=theirs)
        assert (after["state"], after["renewals"]) == ("active", 0)
        assert after["timestamps"]["expires_at"] == held["expires_at"]


async def test_prompts_show_only_what_the_caller_may_see(
    served: tuple[str, Path],
) -> None:
    """The prompts read as the tools do: another tenant's allocation is as
    unknown to explain_refusal as to get_allocation (nothing of it, not even
    its metadata, reaches the text), and size_request shows the caller's
    own tenant's holdings only."""
    url, _ = served
    async with connected(url, A_ONE, BOB) as (alice, bob):
        held = await request(
            alice, "a-secret", workers=1, metadata={"api_key": "s3cr3t-A"}
        )
        theirs = held["allocation_id"]
        await request(bob, "b-job", workers=1)
        with pytest.raises(MCPError) as foreign:
            await bob.get_prompt("explain_refusal", {"allocation_id": theirs})
        with pytest.raises(MCPError) as missing:
            await bob.get_prompt("explain_refusal", {"allocation_id": UNKNOWN})
        assert foreign.value.code == missing.value.code
        assert foreign.value.message.replace(theirs, "<id>") == (
            missing.value.message.replace(UNKNOWN, "<id>")
        )
        assert "s3cr3t-A" not in foreign.value.message
        own = await alice.get_prompt("explain_refusal", {"allocation_id": theirs})
        assert "s3cr3t-A" in own.messages[0].content.text  # type: ignore[union-attr]
        sized = await bob.get_prompt("size_request", {"task": "x"})
        text = sized.messages[0].content.text  # type: ignore[union-attr]
        assert '"bob"' in text and "team-a" not in text


async def test_tokens_of_one_tenant_share_their_allocations(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    async with connected(url, A_ONE, A_TWO, A_BOARD) as (one, two, board):
        made = await request(one, "shared-job", workers=1)
        allocation_id = made["allocation_id"]
        assert made["tenant"] == "team-a"
        seen = await call(two, "get_allocation", allocation_id=allocation_id)
        assert (seen["requested_by"], seen["tenant"]) == ("a-agent-1", "team-a")
        await call(
            two, "renew_allocation", allocation_id=allocation_id, ttl_seconds=600
        )
        assert allocation_id in await listed(board)
        released = await call(two, "release_resources", allocation_id=allocation_id)
        assert released["status"] == "released"
        history = await call(
            board, "get_allocation_history", allocation_id=allocation_id
        )
    # Events record the actor; the allocation's tenant is on its request.
    assert [(e["event"], e["actor"]) for e in history["events"]] == [
        ("requested", "a-agent-1"),
        ("activated", "a-agent-1"),
        ("renewed", "a-agent-2"),
        ("release_requested", "a-agent-2"),
        ("released", "a-agent-2"),
    ]
    assert history["events"][0]["changes"]["tenant"] == "team-a"


# -- listings, queues, usage and capacity ---------------------------------------


async def test_listings_queues_usage_and_capacity_show_the_callers_tenant_only(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    async with connected(url, OPS, A_ONE, BOB) as (ops, alice, bob):
        await call(ops, "set_capacity", workers=3)
        await call(ops, "set_quota", tenant="team-a", workers=5)
        a_holds = (await request(alice, "a-holds", workers=2))["allocation_id"]
        b_holds = (await request(bob, "b-holds", workers=1))["allocation_id"]
        b_waits = await request(bob, "b-waits", workers=1, wait=True)
        a_waits = await request(alice, "a-waits", workers=2, wait=True)
        assert (b_waits["status"], a_waits["status"]) == ("queued", "queued")
        b_waits, a_waits = b_waits["allocation_id"], a_waits["allocation_id"]

        assert await listed(bob) == {b_holds, b_waits}
        assert await listed(bob, state="queued") == {b_waits}
        assert await listed(bob, tenant="bob") == {b_holds, b_waits}
        assert await listed(alice) == {a_holds, a_waits}
        assert await listed(ops) == {a_holds, a_waits, b_holds, b_waits}
        assert await listed(ops, tenant="team-a") == {a_holds, a_waits}
        assert await listed(ops, tenant="team-a", state="active") == {a_holds}

        def queue_of(result: dict[str, Any]) -> list[tuple[str, int]]:
            return [(q["allocation_id"], q["position"]) for q in result["queue"]]

        bob_queue = await call(bob, "get_queue")
        assert (queue_of(bob_queue), bob_queue["count"]) == ([(b_waits, 1)], 1)
        assert queue_of(await call(alice, "get_queue")) == [(a_waits, 2)]
        assert queue_of(await call(ops, "get_queue")) == [(b_waits, 1), (a_waits, 2)]

        capacities = [await call(c, "get_capacity") for c in (ops, alice, bob)]
        pool_wide = ("allocated_workers", "available_workers", "queue_length")
        for capacity in capacities:  # totals are everyone's
            assert [capacity[k] for k in pool_wide] == [3, 0, 2]
            assert capacity["active_allocations"] == 2
        everyone, alices, bobs = capacities
        assert set(everyone["held_by_tenant"]) == {"team-a", "bob"}
        assert alices["held_by_tenant"] == {
            "team-a": {"cpu": 2.0, "memory": 4096, "workers": 2}
        }
        assert bobs["held_by_tenant"] == {
            "bob": {"cpu": 1.0, "memory": 2048, "workers": 1}
        }
        assert set(everyone["quotas"]) == set(alices["quotas"]) == {"team-a"}
        assert bobs["quotas"] == {}
        resource = await bob.read_resource("ledger://pools/default/capacity")
        read = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
        assert (read["held_by_tenant"], read["quotas"]) == (bobs["held_by_tenant"], {})

        async def jobs(client: Client, **filters: Any) -> set[str]:
            usage = await call(client, "get_usage", **filters)
            return {row["job_id"] for row in usage["usage"]}

        assert await jobs(bob) == {"b-holds", "b-waits"}
        assert await jobs(alice) == {"a-holds", "a-waits"}
        assert await jobs(ops) == {"a-holds", "a-waits", "b-holds", "b-waits"}
        assert await jobs(ops, tenant="bob") == {"b-holds", "b-waits"}


async def test_preemption_names_only_what_the_caller_may_see(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    async with connected(url, OPS, A_ONE, BOB) as (ops, alice, bob):
        await call(ops, "set_capacity", workers=2)
        # Priorities compare across tenants here: under a new pool's default,
        # over_quota, bob (no quota) would keep his allocation
        # (tests/test_tenant_preemption_http.py).
        await call(ops, "set_scheduling", cross_tenant_preemption="any")
        victim = (await request(bob, "b-low", workers=2, priority="low"))[
            "allocation_id"
        ]
        urgent = await request(alice, "a-urgent", workers=1, priority="critical")
        assert urgent["status"] == "active"
        assert urgent["preempted"] == []  # bob's allocation is not named to alice
        preemptor = urgent["allocation_id"]

        seen = await call(bob, "get_allocation", allocation_id=victim)
        assert (seen["state"], seen.get("preempted_by")) == ("preempted", None)
        [row] = (await call(bob, "list_allocations"))["allocations"]
        assert (row["state"], row.get("preempted_by")) == ("preempted", None)
        history = await call(bob, "get_allocation_history", allocation_id=victim)
        assert history["events"][-1]["event"] == "preempted"
        assert history["events"][-1]["changes"] == {"preempted_by": None}
        assert history["events"][-1]["actor"] == "another tenant"  # not a-agent-1

        admin_view = await call(ops, "get_allocation", allocation_id=victim)
        assert admin_view["preempted_by"] == preemptor
        history = await call(ops, "get_allocation_history", allocation_id=victim)
        assert history["events"][-1]["changes"] == {"preempted_by": preemptor}
        assert history["events"][-1]["actor"] == "a-agent-1"


# -- request ids belong to their tenant ----------------------------------------


async def test_the_same_request_id_in_two_tenants_names_two_allocations(
    served: tuple[str, Path],
) -> None:
    url, database = served
    alices = {"workers": 1, "request_id": "nightly-7"}
    bobs = {"workers": 2, "request_id": "nightly-7", "priority": "high"}
    async with connected(url, A_ONE, A_TWO, BOB) as (alice, alice_too, bob):
        first = await request(alice, "a-nightly", **alices)
        other = await request(bob, "b-nightly", **bobs)
        assert other["replayed"] is False
        assert other["allocation_id"] != first["allocation_id"]
        assert (other["tenant"], other["resources"]["workers"]) == ("bob", 2)

        # Each tenant's retries find its own, from any of its tokens.
        again = await request(alice_too, "a-nightly", **alices)
        assert (again["replayed"], again["allocation_id"]) == (
            True,
            first["allocation_id"],
        )
        again = await request(bob, "b-nightly", **bobs)
        assert (again["replayed"], again["allocation_id"]) == (
            True,
            other["allocation_id"],
        )

        # Bob repeating alice's arguments is a conflict with his own request,
        # which names his allocation and nothing of hers.
        before = written(database)
        text = await call_error(
            bob,
            "request_resources",
            {"job_id": "a-nightly", "mcp_servers": [], **alices},
        )
        assert f"already used for allocation {other['allocation_id']}" in text
        assert first["allocation_id"] not in text
        assert "team-a" not in text
        assert written(database) == before

        # Neither sees the other's; releasing one leaves the other be.
        for client, theirs in (
            (bob, first["allocation_id"]),
            (alice, other["allocation_id"]),
        ):
            foreign = await client.call_tool(
                "get_allocation", {"allocation_id": theirs}
            )
            missing = await client.call_tool(
                "get_allocation", {"allocation_id": UNKNOWN}
            )
            assert answer(foreign, theirs) == answer(missing, UNKNOWN)
        await call(bob, "release_resources", allocation_id=other["allocation_id"])
        kept = await call(alice, "get_allocation", allocation_id=first["allocation_id"])
        assert kept["state"] == "active"


async def test_a_token_acts_for_its_own_tenant_only(served: tuple[str, Path]) -> None:
    url, database = served
    async with connected(url, BOB) as (bob,):
        before = written(database)
        for tool, arguments in (
            (
                "request_resources",
                {"job_id": "j", "mcp_servers": [], "tenant": "team-a"},
            ),
            ("list_allocations", {"tenant": "team-a"}),
            ("get_usage", {"tenant": "team-a"}),
        ):
            text = await call_error(bob, tool, arguments)
            assert "for tenant 'team-a' needs the 'admin' scope" in text, tool
            assert "acts for tenant 'bob' only" in text, tool
        assert written(database) == before
        own = await request(bob, "j", tenant="bob")  # naming itself is fine
        assert own["tenant"] == "bob"
        assert await listed(bob, tenant="bob") == {own["allocation_id"]}


async def test_an_admin_sees_and_acts_on_every_tenant(served: tuple[str, Path]) -> None:
    url, _ = served
    async with connected(url, OPS, A_ONE, BOB) as (ops, alice, bob):
        theirs = (await request(alice, "a-job", workers=1))["allocation_id"]
        his = (await request(bob, "b-job", workers=1))["allocation_id"]
        assert {theirs, his} <= await listed(ops)
        assert (await call(ops, "get_allocation", allocation_id=theirs))[
            "tenant"
        ] == "team-a"
        renewed = await call(
            ops, "renew_allocation", allocation_id=theirs, ttl_seconds=7200
        )
        assert renewed["renewals"] == 1
        released = await call(ops, "release_resources", allocation_id=his)
        assert released["status"] == "released"
        history = await call(ops, "get_allocation_history", allocation_id=his)
        assert history["events"][-1]["actor"] == "ops"

        # On behalf of a tenant: the allocation is that tenant's.
        for_a = await request(ops, "ops-for-a", workers=1, tenant="team-a")
        assert for_a["tenant"] == "team-a"
        assert for_a["allocation_id"] in await listed(alice)
        history = await call(
            alice, "get_allocation_history", allocation_id=for_a["allocation_id"]
        )
        first = history["events"][0]
        assert (first["actor"], first["changes"]["tenant"]) == ("ops", "team-a")
        # Its own request belongs to its own tenant, which no one else sees.
        own = await request(ops, "ops-own")
        assert own["tenant"] == "ops"
        assert own["allocation_id"] not in await listed(alice)
        assert own["allocation_id"] not in await listed(bob)


# -- stdio and --no-auth ---------------------------------------------------------


async def test_over_stdio_the_local_caller_acts_as_admin(
    served: tuple[str, Path],
) -> None:
    url, database = served
    async with connected(url, A_ONE, BOB) as (alice, bob):
        theirs = (await request(alice, "a-job", workers=1))["allocation_id"]
        his = await request(bob, "b-job", workers=1, request_id="r-1")
        async with Client(stdio_params(database)) as local:
            assert {theirs, his["allocation_id"]} <= await listed(local)
            assert (await call(local, "get_allocation", allocation_id=theirs))[
                "tenant"
            ] == "team-a"
            await call(
                local, "get_allocation_history", allocation_id=his["allocation_id"]
            )
            await call(local, "renew_allocation", allocation_id=theirs)
            released = await call(
                local, "release_resources", allocation_id=his["allocation_id"]
            )
            assert released["status"] == "released"
            queue = await call(local, "get_queue")
            assert queue["count"] == 0
            capacity = await call(local, "get_capacity")
            assert set(capacity["held_by_tenant"]) == {"team-a"}
            # Its own request ids are its own (no tenant); naming bob retries his.
            mine = await request(local, "b-job", workers=1, request_id="r-1")
            assert (mine["replayed"], mine["tenant"]) == (False, None)
            assert mine["allocation_id"] != his["allocation_id"]
            retried = await request(
                local, "b-job", workers=1, request_id="r-1", tenant="bob"
            )
            assert (retried["replayed"], retried["allocation_id"]) == (
                True,
                his["allocation_id"],
            )
        seen = await call(alice, "get_allocation", allocation_id=theirs)
        assert (seen["renewals"], seen["last_actor"]) == (1, "local")
        assert mine["allocation_id"] not in await listed(alice)


async def test_without_authentication_every_caller_is_one_tenant(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    with http_server_process(database, "--no-auth") as (base, _):
        async with connected(base + "/mcp", "", "") as (one, two):
            made = await request(one, "open-job", workers=1, request_id="r-open")
            assert made["tenant"] is None
            assert made["allocation_id"] in await listed(two)
            again = await request(two, "open-job", workers=1, request_id="r-open")
            assert (again["replayed"], again["allocation_id"]) == (
                True,
                made["allocation_id"],
            )
            released = await call(
                two, "release_resources", allocation_id=made["allocation_id"]
            )
            assert released["status"] == "released"
            history = await call(
                one, "get_allocation_history", allocation_id=made["allocation_id"]
            )
            assert {e["actor"] for e in history["events"]} == {"anonymous"}
