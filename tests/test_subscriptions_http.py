"""Subscriptions with real servers and the official client: over streamable
HTTP with the tokens of two tenants and an admin, over stdio, and across
two servers on one PostgreSQL ledger (docs/tools.md, "Subscriptions")."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import init_database
from tests.mcp_support import call, http_server_process, stdio_params
from tests.postgres import postgres_schema, postgres_settings
from tests.subscription_support import (
    LEGACY_SUBSCRIBE,
    STATE,
    Told,
    allocation_uri,
    pool_uri,
)
from tests.test_scale_out import postgres_env

__all__ = ["postgres_schema"]

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings(LEGACY_SUBSCRIBE)]

A_ONE = "team-a-agent-one-0123456789"
BOB = "bob-writes-alone-0123456789"
OPS = "ops-admin-sees-all-0123456789"
TOKENS = [
    {"subject": "a-agent-1", "tenant": "team-a", "scopes": ["write"], "token": A_ONE},
    {"subject": "bob", "scopes": ["write"], "token": BOB},
    {"subject": "ops", "scopes": ["admin"], "token": OPS},
]
UNKNOWN = "alloc-0123456789ab"


@asynccontextmanager
async def client_of(
    url: str, told: Told, token: str | None = None, *, mode: str = "auto"
) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP whose notifications go to `told`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(
            streamable_http_client(url, http_client=http),
            message_handler=told,
            mode=mode,
        ) as client,
    ):
        yield client


Listen = Callable[[Client, list[str]], Awaitable[list[str]]]


@asynccontextmanager
async def listening() -> AsyncIterator[Listen]:
    """`listen(client, uris)` opens a listen stream held until the block
    ends; returns the URIs it honored."""
    async with anyio.create_task_group() as group:

        async def listen(client: Client, uris: list[str]) -> list[str]:
            honored: list[str] = []
            opened = anyio.Event()

            async def hold() -> None:
                async with client.listen(resource_subscriptions=uris) as stream:
                    honored.extend(stream.honored.resource_subscriptions or [])
                    opened.set()
                    async for _ in stream:
                        pass

            group.start_soon(hold)
            await opened.wait()
            return honored

        yield listen
        group.cancel_scope.cancel()


async def ask(client: Client, job: str, workers: int, **options: Any) -> dict[str, Any]:
    return await call(
        client,
        "request_resources",
        job_id=job,
        mcp_servers=[],
        workers=workers,
        **options,
    )


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A server with two tenants' tokens and an admin's, warning of a lease's
    end 59.5 s before it (0.5 s after a 60 s lease starts)."""
    with http_server_process(
        tmp_path / "ledger.db",
        ALLOCATION_LEDGER_TOKENS=json.dumps(TOKENS),
        ALLOCATION_LEDGER_LEASE_WARNING_SECONDS="59.5",
    ) as (base, _):
        yield base + "/mcp"


async def test_over_http_each_tenant_is_told_of_its_own_allocations_only(
    served: str,
) -> None:
    told = {name: Told() for name in ("a", "a_legacy", "bob", "ops")}
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(client_of(served, told["a"], A_ONE))
        a_legacy = await stack.enter_async_context(
            client_of(served, told["a_legacy"], A_ONE, mode="legacy")
        )
        bob = await stack.enter_async_context(client_of(served, told["bob"], BOB))
        ops = await stack.enter_async_context(client_of(served, told["ops"], OPS))
        listen = await stack.enter_async_context(listening())

        await call(ops, "set_capacity", workers=4)
        blocker = await ask(a, "blocker", 3, priority="low")
        a_wait = await ask(a, "a-waits", 2, wait=True, ttl_seconds=60)
        b_wait = await ask(bob, "b-waits", 2, wait=True, ttl_seconds=60)
        assert (a_wait["status"], b_wait["status"]) == ("queued", "queued")
        a_uri = allocation_uri(a_wait["allocation_id"])
        b_uri = allocation_uri(b_wait["allocation_id"])

        # Another tenant's allocation is dropped exactly as an unknown one.
        assert await listen(a, [a_uri, b_uri, pool_uri()]) == [a_uri, pool_uri()]
        assert await listen(bob, [b_uri, a_uri]) == [b_uri]
        assert await listen(ops, [a_uri, b_uri]) == [a_uri, b_uri]
        await a_legacy.subscribe_resource(a_uri)
        refusals = []
        for other in (b_uri, allocation_uri(UNKNOWN)):
            with pytest.raises(MCPError) as refused:
                await a_legacy.subscribe_resource(other)
            refusals.append(str(refused.value).replace(other, "<uri>"))
        assert refusals[0] == refusals[1]

        await call(a, "release_resources", allocation_id=blocker["allocation_id"])
        for name, uri in (("a", a_uri), ("a_legacy", a_uri), ("bob", b_uri)):
            assert (await told[name].wait_for(uri, "granted"))[STATE] == "active"
            # A 60 s lease, warned of 59.5 s before its end.
            await told[name].wait_for(uri, "lease_ending")
        await told["ops"].wait_for(a_uri, "granted")
        await told["ops"].wait_for(b_uri, "granted")
        await told["a"].wait_for(pool_uri(), "capacity_changed")

        # The admin's request takes other tenants' capacity only where the
        # pool lets priorities compare across tenants (docs/scheduling.md).
        await call(ops, "set_scheduling", cross_tenant_preemption="any")
        urgent = await ask(ops, "urgent", 4, priority="critical")
        assert set(urgent["preempted"]) == {
            a_wait["allocation_id"],
            b_wait["allocation_id"],
        }
        for name, uri in (("a", a_uri), ("a_legacy", a_uri), ("bob", b_uri)):
            assert (await told[name].wait_for(uri, "preempted"))[STATE] == "preempted"
        await anyio.sleep(0.5)  # time for anything that should not come

    for name in ("a", "a_legacy"):
        assert b_uri not in told[name].uris()
        assert told[name].events(a_uri) == ["granted", "lease_ending", "preempted"]
    assert told["bob"].uris() == {b_uri}
    assert told["bob"].events(b_uri) == ["granted", "lease_ending", "preempted"]


async def test_a_stateless_server_refuses_resources_subscribe_and_serves_listen(
    tmp_path: Path,
) -> None:
    """Without sessions there is nowhere to send a session's updates: the
    subscription is refused, saying what to use instead."""
    told, told_legacy = Told(), Told()
    with http_server_process(
        tmp_path / "ledger.db", "--no-auth", ALLOCATION_LEDGER_HTTP_STATELESS="true"
    ) as (base, _):
        async with (
            client_of(base + "/mcp", told) as client,
            client_of(base + "/mcp", told_legacy, mode="legacy") as legacy,
            listening() as listen,
        ):
            made = await ask(client, "job", 1)
            uri = allocation_uri(made["allocation_id"])
            with pytest.raises(MCPError) as refused:
                await legacy.subscribe_resource(uri)
            assert "subscribe with subscriptions/listen" in str(refused.value)
            assert await listen(client, [uri]) == [uri]
            await call(legacy, "renew_allocation", allocation_id=made["allocation_id"])
            await told.wait_for(uri, "renewed")


async def test_over_stdio_a_listening_client_is_told_of_its_grant(
    tmp_path: Path,
) -> None:
    told = Told()
    params = stdio_params(tmp_path / "ledger.db")
    async with (
        Client(params, message_handler=told) as client,
        listening() as listen,
    ):
        await call(client, "set_capacity", workers=2)
        blocker = await ask(client, "blocker", 2)
        waiter = await ask(client, "waiter", 1, wait=True)
        uri = allocation_uri(waiter["allocation_id"])
        assert await listen(client, [uri]) == [uri]
        await call(client, "release_resources", allocation_id=blocker["allocation_id"])
        assert (await told.wait_for(uri, "granted"))[STATE] == "active"


@pytest.mark.postgres
async def test_a_subscriber_learns_of_another_servers_release_within_two_seconds(
    postgres_schema: str, tmp_path: Path
) -> None:
    """Two servers on one PostgreSQL: subscribed on the first (listen and
    resources/subscribe), the blocker released on the second; the first
    learns of the grant from the event log itself."""
    settings: Settings = postgres_settings(postgres_schema)
    init_database(settings)
    env = postgres_env(postgres_schema)
    placeholder = tmp_path / "unused.db"
    told, told_legacy = Told(), Told()
    with (
        http_server_process(placeholder, "--no-auth", **env) as (first, _),
        http_server_process(placeholder, "--no-auth", **env) as (second, _),
    ):
        async with (
            client_of(first + "/mcp", told) as here,
            client_of(first + "/mcp", told_legacy, mode="legacy") as here_legacy,
            client_of(second + "/mcp", Told()) as there,
            listening() as listen,
        ):
            await call(there, "set_capacity", workers=2)
            blocker = await ask(there, "blocker", 2)
            waiter = await ask(here, "waiter", 1, wait=True)
            assert waiter["status"] == "queued"
            uri = allocation_uri(waiter["allocation_id"])
            assert await listen(here, [uri]) == [uri]
            await here_legacy.subscribe_resource(uri)

            released = time.monotonic()
            await call(
                there, "release_resources", allocation_id=blocker["allocation_id"]
            )
            for each in (told, told_legacy):
                granted = await each.wait_for(uri, "granted", timeout=2.0)
                assert granted[STATE] == "active"
            assert time.monotonic() - released < 2.0


async def test_a_server_with_open_streams_and_waiting_calls_stops_promptly(
    tmp_path: Path,
) -> None:
    """SIGTERM while a listen stream is open and a call waits in the queue:
    the server stops within its grace period (5 s) plus slack, not when the
    stream's client or the call's block_seconds let it (it hung until the
    client left; found by a break-it session). Both are cut."""
    cut: list[str] = []
    with http_server_process(tmp_path / "ledger.db", "--no-auth") as (base, process):
        async with (
            client_of(base + "/mcp", Told()) as client,
            client_of(base + "/mcp", Told()) as waiter,
            anyio.create_task_group() as group,
        ):
            await call(client, "set_capacity", workers=1)
            made = await ask(client, "holder", 1)
            opened = anyio.Event()

            async def hold_a_stream() -> None:
                uri = allocation_uri(made["allocation_id"])
                try:
                    async with client.listen(resource_subscriptions=[uri]) as stream:
                        opened.set()
                        async for _ in stream:
                            pass
                except Exception:  # noqa: BLE001 - the stop cuts it
                    cut.append("listen")

            async def wait_in_queue() -> None:
                try:
                    await waiter.call_tool(
                        "request_resources",
                        {
                            "job_id": "patient",
                            "mcp_servers": [],
                            "workers": 1,
                            "wait": True,
                            "block_seconds": 120,
                        },
                    )
                except Exception:  # noqa: BLE001 - the stop cuts it
                    cut.append("wait")

            group.start_soon(hold_a_stream)
            group.start_soon(wait_in_queue)
            await opened.wait()
            await anyio.sleep(1)
            stopping = time.monotonic()
            process.terminate()
            await anyio.to_thread.run_sync(lambda: process.wait(timeout=60))
            assert time.monotonic() - stopping < 20
            group.cancel_scope.cancel()
    assert sorted(cut) == ["listen", "wait"]


@pytest.mark.slow
async def test_over_http_a_subscriber_is_told_of_its_lease_ending_and_expiry(
    tmp_path: Path,
) -> None:
    """The whole life of a lease over HTTP, through both generations: the
    warning 58 s before a 60 s lease ends, then its expiry by the sweeper
    (every second here). Slow: a lease is at least 60 s of real time."""
    told, told_legacy = Told(), Told()
    with http_server_process(
        tmp_path / "ledger.db",
        "--no-auth",
        ALLOCATION_LEDGER_LEASE_WARNING_SECONDS="58",
        ALLOCATION_LEDGER_SWEEP_INTERVAL_SECONDS="1",
    ) as (base, _):
        async with (
            client_of(base + "/mcp", told) as client,
            client_of(base + "/mcp", told_legacy, mode="legacy") as legacy,
            listening() as listen,
        ):
            made = await ask(client, "short", 1, ttl_seconds=60)
            uri = allocation_uri(made["allocation_id"])
            assert await listen(client, [uri]) == [uri]
            await legacy.subscribe_resource(uri)
            for heard in (told, told_legacy):
                warned = await heard.wait_for(uri, "lease_ending", timeout=15)
                assert warned[STATE] == "active"
            for heard in (told, told_legacy):
                ended = await heard.wait_for(uri, "expired", timeout=90)
                assert ended[STATE] == "expired"
    assert told.events(uri) == ["lease_ending", "expired"]
    assert told_legacy.events(uri) == ["lease_ending", "expired"]
