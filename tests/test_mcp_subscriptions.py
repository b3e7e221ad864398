"""Subscriptions in memory, on a manual clock: a client subscribed to an
allocation is told of its grant from the queue, its preemption, the end of
its lease coming and its expiry, through subscriptions/listen (2026-07-28)
and through resources/subscribe (earlier versions); docs/tools.md,
"Subscriptions". What subscribers hear of an allocation's MCP server
processes: test_mcp_server_subscriptions.py."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from allocation_ledger.adapters.mcp import server as server_module
from allocation_ledger.adapters.mcp.resource_updates import ResourceUpdates
from allocation_ledger.adapters.mcp.server import resource_updates, stdio_server
from allocation_ledger.adapters.mcp.subscriptions import MAX_LISTEN_STREAMS_PER_CALLER
from allocation_ledger.adapters.mcp.update_meta import ResourceUpdate
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.tenancy import EVERY_TENANT, Visibility
from tests.mcp_support import OpenMemory, call
from tests.subscription_support import (
    EXPIRES,
    LEGACY_SUBSCRIBE,
    STATE,
    SUBSCRIPTION_ID,
    Told,
    allocation_uri,
    pool_uri,
)

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings(LEGACY_SUBSCRIBE)]

WARNING = 30.0
"""Seconds before a lease's end its subscribers are told, in these tests."""


@pytest.fixture
def service(open_memory: OpenMemory) -> AllocationService:
    return open_memory(sweep_interval_seconds=0.05, lease_warning_seconds=WARNING)


@asynccontextmanager
async def connected(
    service: AllocationService, told: Told, **options: Any
) -> AsyncIterator[Client]:
    async with Client(stdio_server(service), message_handler=told, **options) as client:
        yield client


async def ask(
    client: Client, job: str, workers: int, priority: str = "normal", **options: Any
) -> dict[str, Any]:
    return await call(
        client,
        "request_resources",
        job_id=job,
        mcp_servers=[],
        workers=workers,
        priority=priority,
        **options,
    )


async def granted_then_preempted(client: Client, told: Told, subscribe: Any) -> None:
    """A queued request's subscriber hears of its grant, then of its
    preemption; the blocker's subscriber of its release; the pool's of
    each change of capacity. `subscribe(uris)` holds the URIs."""
    await call(client, "set_capacity", workers=4)
    blocker = await ask(client, "blocker", 3, "low")
    waiter = await ask(client, "waiter", 2, wait=True)
    assert waiter["status"] == "queued"
    waiting, blocking = (
        allocation_uri(waiter["allocation_id"]),
        allocation_uri(blocker["allocation_id"]),
    )
    await subscribe([waiting, blocking, pool_uri()])

    await call(client, "release_resources", allocation_id=blocker["allocation_id"])
    grant = await told.wait_for(waiting, "granted")
    assert grant[STATE] == "active"
    assert datetime.fromisoformat(grant[EXPIRES]).utcoffset() is not None
    await told.wait_for(blocking, "released")
    await told.wait_for(pool_uri(), "capacity_changed")

    urgent = await ask(client, "urgent", 4, "critical")
    assert urgent["preempted"] == [waiter["allocation_id"]]
    preempted = await told.wait_for(waiting, "preempted")
    assert preempted[STATE] == "preempted"
    await call(client, "release_resources", allocation_id=urgent["allocation_id"])
    assert told.events(waiting) == ["granted", "preempted"]


async def warned_renewed_and_expired(
    client: Client, clock: ManualClock, told: Told, subscribe: Any
) -> None:
    """A lease's subscriber is warned WARNING seconds before its end, warned
    again after a renewal moved the end, and told of the expiry."""
    leased = await ask(client, "leased", 1, ttl_seconds=60)
    uri = allocation_uri(leased["allocation_id"])
    await subscribe([uri])

    clock.advance(60 - WARNING - 1)
    await anyio.sleep(0.2)
    assert "lease_ending" not in told.events(uri)  # not yet
    clock.advance(2)
    warning = await told.wait_for(uri, "lease_ending")
    assert warning[EXPIRES] == leased["expires_at"]
    assert warning[STATE] == "active"

    renewed = await call(
        client,
        "renew_allocation",
        allocation_id=leased["allocation_id"],
        ttl_seconds=120,
    )
    assert (await told.wait_for(uri, "renewed"))[EXPIRES] == renewed["expires_at"]
    clock.advance(120 - WARNING + 1)
    again = await told.wait_for(uri, "lease_ending", nth=2)
    assert again[EXPIRES] == renewed["expires_at"]

    clock.advance(WARNING)  # the sweeper (every 0.05 s here) expires it
    expired = await told.wait_for(uri, "expired")
    assert expired[STATE] == "expired"
    assert told.events(uri) == ["lease_ending", "renewed", "lease_ending", "expired"]


async def test_a_listening_client_is_told_of_grant_preemption_warning_and_expiry(
    service: AllocationService, clock: ManualClock
) -> None:
    told = Told()
    async with connected(service, told) as client, anyio.create_task_group() as group:
        assert client.session.protocol_version == "2026-07-28"
        acknowledged: list[list[str]] = []

        async def subscribe(uris: list[str]) -> None:
            opened = anyio.Event()

            async def hold() -> None:
                async with client.listen(resource_subscriptions=uris) as stream:
                    acknowledged.append(stream.honored.resource_subscriptions or [])
                    opened.set()
                    async for _ in stream:
                        pass

            group.start_soon(hold)
            await opened.wait()

        await granted_then_preempted(client, told, subscribe)
        await warned_renewed_and_expired(client, clock, told, subscribe)
        assert all(
            meta[SUBSCRIPTION_ID].startswith("listen-") for _, meta in told.updates
        )
        group.cancel_scope.cancel()
    assert len(acknowledged) == 2
    assert len(acknowledged[0]) == 3  # everything asked for is honored


async def test_a_session_subscribed_with_resources_subscribe_is_told_the_same(
    service: AllocationService, clock: ManualClock
) -> None:
    told = Told()
    async with connected(service, told, mode="legacy") as client:
        assert (client.session.protocol_version or "") < "2026-07-28"
        capabilities = client.session.server_capabilities
        assert capabilities is not None and capabilities.resources is not None
        assert capabilities.resources.subscribe is True

        async def subscribe(uris: list[str]) -> None:
            for uri in uris:
                await client.subscribe_resource(uri)

        await granted_then_preempted(client, told, subscribe)
        await warned_renewed_and_expired(client, clock, told, subscribe)
        assert not any(SUBSCRIPTION_ID in meta for _, meta in told.updates)


async def test_unsubscribing_stops_the_updates_and_unknown_resources_are_refused(
    service: AllocationService,
) -> None:
    told = Told()
    async with connected(service, told, mode="legacy") as client:
        made = await ask(client, "job", 1)
        uri = allocation_uri(made["allocation_id"])
        await client.subscribe_resource(uri)
        await call(client, "renew_allocation", allocation_id=made["allocation_id"])
        await told.wait_for(uri, "renewed")
        await client.unsubscribe_resource(uri)
        await call(client, "release_resources", allocation_id=made["allocation_id"])
        await anyio.sleep(0.5)
        assert told.events(uri) == ["renewed"]

        for unknown in (
            "ledger://allocations/alloc-0123456789ab",
            "ledger://pools/nowhere/capacity",
            "ledger://somewhere/else",
            # accepted before, and never told (updates name the exact URI)
            "ledger://pools/default/capacity\n",
        ):
            with pytest.raises(MCPError) as refused:
                await client.subscribe_resource(unknown)
            assert f"cannot subscribe to {unknown}: no such resource" in str(
                refused.value
            )


async def test_a_listen_stream_honors_only_what_exists(
    service: AllocationService,
) -> None:
    told = Told()
    async with connected(service, told) as client:
        made = await ask(client, "job", 1)
        asked = [
            allocation_uri(made["allocation_id"]),
            "ledger://allocations/alloc-0123456789ab",
            "ledger://pools/nowhere/capacity",
            pool_uri(),
        ]
        async with client.listen(
            resource_subscriptions=asked,
            tools_list_changed=True,
            resources_list_changed=True,
        ) as stream:
            assert stream.honored.resource_subscriptions == [asked[0], asked[3]]
            assert stream.honored.tools_list_changed is True
            assert stream.honored.resources_list_changed is None  # never announced


def keep(into: list[str], update: ResourceUpdate) -> None:
    into.append(update.uri)


def test_every_update_is_checked_against_the_subscribers_tenant(
    service: AllocationService,
) -> None:
    """Even a URI a subscriber holds (here forged: no caller could hold
    another tenant's allocation) brings it nothing about another tenant's
    allocation; pools reach everyone, a caller who sees every tenant sees
    all (resource_updates.ResourceUpdates.publish)."""
    hub = resource_updates(service)
    got: dict[str, list[str]] = {"team-a": [], "all": []}
    for name, visibility in (("team-a", Visibility("team-a")), ("all", EVERY_TENANT)):
        subscriber = hub.subscriber(visibility, functools.partial(keep, got[name]))
        for uri in (allocation_uri("alloc-b"), pool_uri()):
            subscriber.add(uri)
    hub.publish(
        ResourceUpdate(allocation_uri("alloc-b"), {}, tenant="team-b", private=True)
    )
    hub.publish(ResourceUpdate(pool_uri(), {}))
    assert got == {
        "team-a": [pool_uri()],
        "all": [allocation_uri("alloc-b"), pool_uri()],
    }


async def test_a_sessions_subscriptions_end_with_it(
    service: AllocationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    hubs: list[ResourceUpdates] = []

    def kept(service: AllocationService) -> ResourceUpdates:
        hubs.append(resource_updates(service))
        return hubs[-1]

    monkeypatch.setattr(server_module, "resource_updates", kept)
    server = stdio_server(service)
    [hub] = hubs
    made = await ask_once(server)
    async with Client(server, mode="legacy") as client:
        await client.subscribe_resource(allocation_uri(made))
        await client.subscribe_resource(pool_uri())
        assert [len(s.uris) for s in hub._subscribers] == [2]
        assert list(hub._watches) == [made]
    assert not hub._subscribers  # the session ended: so did its subscriptions
    assert not hub._watches


async def ask_once(server: Any) -> str:
    async with Client(server) as client:
        return str((await ask(client, "job", 1))["allocation_id"])


async def test_one_caller_holds_a_bounded_number_of_listen_streams(
    service: AllocationService,
) -> None:
    """One caller (one token's subject) may hold MAX_LISTEN_STREAMS_PER_CALLER
    streams: past that it is refused, naming the limit, and a stream it
    closes frees a place (one read-only token took all 1,024 of a server's
    streams from every other tenant; found by a break-it session)."""
    limit = MAX_LISTEN_STREAMS_PER_CALLER
    async with (
        connected(service, Told()) as client,
        anyio.create_task_group() as group,
    ):
        closers: list[anyio.Event] = []

        async def hold(opened: anyio.Event, close: anyio.Event) -> None:
            async with client.listen(resource_subscriptions=[pool_uri()]):
                opened.set()
                await close.wait()

        for _ in range(limit):
            opened, close = anyio.Event(), anyio.Event()
            closers.append(close)
            group.start_soon(hold, opened, close)
            await opened.wait()
        with pytest.raises(MCPError) as refused:
            async with client.listen(resource_subscriptions=[pool_uri()]):
                pass
        assert f"holds {limit} listen streams" in str(refused.value)

        closers[0].set()
        with anyio.fail_after(10):
            while True:
                try:
                    async with client.listen(resource_subscriptions=[pool_uri()]):
                        break
                except MCPError:
                    await anyio.sleep(0.05)
        for close in closers:
            close.set()
