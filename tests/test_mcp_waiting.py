"""Requests that wait in the call, in memory through the official client:
request_resources(wait=true, block_seconds=N) and await_allocation, their
progress notifications, queue timeouts, cancellation and tenants."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from allocation_ledger.adapters.http.auth import TENANT_CLAIM, Access, expand_scopes
from allocation_ledger.adapters.mcp.ledger_server import LedgerServer
from allocation_ledger.adapters.mcp.server import build_server, stdio_server
from allocation_ledger.adapters.mcp.tools.waiting import Sighting, progress_message
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest
from tests.mcp_support import call, call_error, text_of

pytestmark = pytest.mark.anyio

Progress = list[tuple[float, float | None, str | None]]


@pytest.fixture
async def client(client: Client) -> Client:
    """The shared client, on a pool of 4 workers."""
    await call(client, "set_capacity", workers=4)
    return client


async def ask(client: Client, job: str, workers: int, **options: Any) -> dict[str, Any]:
    return await call(
        client,
        "request_resources",
        job_id=job,
        mcp_servers=[],
        workers=workers,
        **options,
    )


async def until(condition: Callable[[], bool], seconds: float = 5) -> None:
    """Wait (bounded) until `condition` holds."""
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


class Blocked:
    """A tool call left running in a task group, with the progress it was
    told and its result once it returns."""

    def __init__(self) -> None:
        self.progress: Progress = []
        self.result: dict[str, Any] | None = None
        self.error: str | None = None
        self.returned_at: float | None = None

    async def told(
        self, progress: float, total: float | None, message: str | None
    ) -> None:
        self.progress.append((progress, total, message))

    def messages(self) -> list[str | None]:
        return [message for _, _, message in self.progress]

    async def run(self, client: Client, tool: str, arguments: dict[str, Any]) -> None:
        result = await client.call_tool(tool, arguments, progress_callback=self.told)
        self.returned_at = time.monotonic()
        if result.is_error:
            self.error = text_of(result)
        else:
            assert result.structured_content is not None
            self.result = dict(result.structured_content)


def blocking_request(job: str, workers: int, **options: Any) -> dict[str, Any]:
    return {
        "job_id": job,
        "mcp_servers": [],
        "workers": workers,
        "wait": True,
        "block_seconds": 60,
        **options,
    }


async def test_a_blocked_request_returns_active_when_another_agent_releases(
    client: Client,
) -> None:
    first = await ask(client, "holder-1", 2)
    second = await ask(client, "holder-2", 2)
    ahead = await ask(client, "ahead", 2, wait=True)
    assert ahead["queue_position"] == 1
    blocked = Blocked()
    async with anyio.create_task_group() as group:
        group.start_soon(
            blocked.run,
            client,
            "request_resources",
            blocking_request("waiter", 2, request_id="waiter-1"),
        )
        await until(lambda: len(blocked.progress) == 1)
        assert blocked.progress == [
            (
                1.0,
                None,
                "queued at position 2 of 2 in pool default, "
                "waiting for 2 workers (0 free)",
            )
        ]
        await call(client, "release_resources", allocation_id=first["allocation_id"])
        # The request ahead is granted: this one moves up.
        await until(lambda: len(blocked.progress) == 2)
        assert blocked.progress[1] == (
            2.0,
            None,
            "queued at position 1 of 1 in pool default, waiting for 2 workers (0 free)",
        )
        assert blocked.result is None  # still waiting
        released_at = time.monotonic()
        await call(client, "release_resources", allocation_id=second["allocation_id"])
    assert blocked.returned_at is not None
    assert blocked.returned_at - released_at < 2
    result = blocked.result
    assert result is not None, blocked.error
    assert result["status"] == result["state"] == "active"
    assert len(result["workers_allocated"]) == 2
    assert all(w["status"] == "active" for w in result["workers_allocated"])
    assert all(w["endpoint"].startswith("http://") for w in result["workers_allocated"])
    assert result["expires_at"] is not None
    assert "queue_position" not in result
    assert "waiting_for" not in result
    assert len(blocked.progress) == 2  # nothing more was told
    # What a retry answers of it now, to the letter.
    replay = await ask(client, "waiter", 2, wait=True, request_id="waiter-1")
    assert replay == {**result, "replayed": True}
    # The same answer get_allocation gives of it now.
    detail = await call(client, "get_allocation", allocation_id=result["allocation_id"])
    assert [w["endpoint"] for w in detail["workers"]] == [
        w["endpoint"] for w in result["workers_allocated"]
    ]


async def test_a_request_that_fits_is_answered_at_once_with_block_seconds(
    client: Client,
) -> None:
    began = time.monotonic()
    result = await ask(client, "fits", 2, wait=True, block_seconds=60)
    assert result["status"] == "active"
    assert time.monotonic() - began < 5


async def test_when_block_seconds_pass_the_reply_is_the_queued_reply(
    client: Client,
) -> None:
    await ask(client, "holder", 4)
    first = await ask(client, "waiter", 1, wait=True, request_id="wait-1")
    assert first["status"] == "queued"
    began = time.monotonic()
    again = await ask(
        client, "waiter", 1, wait=True, request_id="wait-1", block_seconds=1
    )
    assert time.monotonic() - began >= 1
    assert again == {**first, "replayed": True}


async def test_a_queue_timeout_ends_the_wait_with_failed(
    client: Client, clock: ManualClock
) -> None:
    await ask(client, "holder", 4)
    blocked = Blocked()
    async with anyio.create_task_group() as group:
        group.start_soon(
            blocked.run,
            client,
            "request_resources",
            blocking_request(
                "impatient", 1, max_wait_seconds=60, request_id="impatient-1"
            ),
        )
        await until(lambda: len(blocked.progress) == 1)
        clock.advance(61)
        await call(client, "cleanup_expired")  # the sweeper's round
    result = blocked.result
    assert result is not None, blocked.error
    assert result["status"] == "failed"
    assert result["reason"]["code"] == "queue_timeout"
    assert result["error"].startswith("Queue wait ran out")
    replay = await ask(
        client,
        "impatient",
        1,
        wait=True,
        max_wait_seconds=60,
        request_id="impatient-1",
    )
    assert replay == {**result, "replayed": True}


async def test_a_cancelled_call_leaves_the_request_queued(
    service: AllocationService,
) -> None:
    server = stdio_server(service)
    assert isinstance(server, LedgerServer)
    async with Client(server) as client:
        holder = await ask(client, "holder", 10)
        blocked = Blocked()
        with anyio.move_on_after(0.5):
            await blocked.run(
                client,
                "request_resources",
                blocking_request("patient", 1, request_id="stays-queued"),
            )
        assert blocked.result is None  # cancelled by the client
        assert blocked.messages() == [
            "queued at position 1 of 1 in pool default, waiting for 1 worker (0 free)"
        ]
        # The server stopped waiting: nobody listens to its changes any more.
        await until(lambda: not server.changes.wanted())
        queued = await call(client, "list_allocations", state="queued")
        [allocation] = queued["allocations"]
        assert allocation["job_id"] == "patient"
        allocation_id = allocation["allocation_id"]
        detail = await call(client, "get_allocation", allocation_id=allocation_id)
        assert detail["state"] == "queued"
        # Still in the queue: granted when room frees.
        await call(client, "release_resources", allocation_id=holder["allocation_id"])
        detail = await call(client, "get_allocation", allocation_id=allocation_id)
        assert detail["state"] == "active"


async def test_await_allocation_waits_for_the_grant_and_answers_as_get_allocation(
    client: Client,
) -> None:
    holder = await ask(client, "holder", 3)
    queued = await ask(client, "waiter", 2, wait=True)
    blocked = Blocked()
    async with anyio.create_task_group() as group:
        group.start_soon(
            blocked.run,
            client,
            "await_allocation",
            {"allocation_id": queued["allocation_id"], "block_seconds": 60},
        )
        await until(lambda: len(blocked.progress) == 1)
        assert blocked.messages() == [
            "queued at position 1 of 1 in pool default, waiting for 2 workers (1 free)"
        ]
        await call(client, "release_resources", allocation_id=holder["allocation_id"])
    assert blocked.result is not None, blocked.error
    assert blocked.result["state"] == "active"
    detail = await call(client, "get_allocation", allocation_id=queued["allocation_id"])
    for timing in (blocked.result, detail):
        timing["timestamps"].pop("age_seconds")
    assert blocked.result == detail


async def test_await_allocation_answers_at_once_unless_queued_or_pending(
    client: Client,
) -> None:
    active = await ask(client, "live", 1)
    released = await ask(client, "done", 1)
    await call(client, "release_resources", allocation_id=released["allocation_id"])
    refused = await ask(client, "too-big", 9)
    for allocation, state in (
        (active, "active"),
        (released, "released"),
        (refused, "failed"),
    ):
        began = time.monotonic()
        shown = await call(
            client, "await_allocation", allocation_id=allocation["allocation_id"]
        )
        assert shown["state"] == state
        assert time.monotonic() - began < 5


async def test_await_allocation_returns_queued_when_its_seconds_pass(
    client: Client,
) -> None:
    await ask(client, "holder", 4)
    queued = await ask(client, "waiter", 1, wait=True)
    began = time.monotonic()
    shown = await call(
        client,
        "await_allocation",
        allocation_id=queued["allocation_id"],
        block_seconds=1,
    )
    assert time.monotonic() - began >= 1
    assert shown["state"] == "queued"
    assert shown["waiting_for"]["dimension"] == "workers"


@asynccontextmanager
async def as_tenant(service: AllocationService, tenant: str) -> AsyncIterator[Client]:
    """A client whose calls carry `tenant`'s verified write token, as over HTTP."""
    token = AccessToken(
        token="t",
        client_id=tenant,
        subject=tenant,
        scopes=expand_scopes(["write"]),
        claims={TENANT_CLAIM: tenant},
    )
    reset = auth_context_var.set(AuthenticatedUser(token))
    try:
        server = build_server(service, access=Access(require_token=True))
        async with Client(server) as connected:
            yield connected
    finally:
        auth_context_var.reset(reset)


async def test_another_tenants_allocation_is_answered_as_unknown(
    service: AllocationService,
) -> None:
    async with as_tenant(service, "team-a") as ours:
        await ask(ours, "holder", 10)
        queued = await ask(ours, "waiter", 1, wait=True)
        assert queued["status"] == "queued"
    async with as_tenant(service, "team-b") as theirs:
        began = time.monotonic()
        text = await call_error(
            theirs, "await_allocation", {"allocation_id": queued["allocation_id"]}
        )
        assert time.monotonic() - began < 5
        unknown = await call_error(
            theirs, "get_allocation", {"allocation_id": queued["allocation_id"]}
        )
        assert text == unknown.replace("get_allocation", "await_allocation")
        assert f"allocation '{queued['allocation_id']}' not found" in text


async def first_progress(client: Client, allocation_id: str) -> list[str | None]:
    """The progress messages of a one-second await_allocation."""
    blocked = Blocked()
    await blocked.run(
        client,
        "await_allocation",
        {"allocation_id": allocation_id, "block_seconds": 1},
    )
    return blocked.messages()


@pytest.mark.parametrize(
    ("capacity", "ahead", "message"),
    [
        (
            {"workers": 10, "cpu": 4},
            False,
            "queued at position 1 of 1 in pool default, "
            "waiting for 2 CPU cores (1 free)",
        ),
        (
            {"workers": 10, "memory": 8192},
            False,
            "queued at position 1 of 1 in pool default, "
            "waiting for 4096 MB of memory (2048 free)",
        ),
        (
            {"workers": 4},
            True,
            "queued at position 2 of 2 in pool default, "
            "waiting behind the requests ahead of it (it needs 2 workers)",
        ),
    ],
)
async def test_progress_says_what_the_request_waits_for(
    client: Client, capacity: dict[str, int], ahead: bool, message: str
) -> None:
    await call(client, "set_capacity", **capacity)
    await ask(client, "holder", 3 if not ahead else 1)
    if ahead:
        await ask(client, "big", 4, wait=True)
    queued = await ask(client, "waiter", 2, wait=True)
    assert queued["status"] == "queued"
    assert await first_progress(client, queued["allocation_id"]) == [message]


async def test_progress_tells_when_the_tenants_quota_is_what_it_waits_for(
    client: Client,
) -> None:
    await call(client, "set_quota", tenant="team-a", workers=3)
    theirs = await ask(client, "b-job", 2, tenant="team-b")
    await ask(client, "a-job", 1, tenant="team-a")
    queued = await ask(client, "a-waiter", 2, wait=True, tenant="team-a")
    blocked = Blocked()
    async with anyio.create_task_group() as group:
        group.start_soon(
            blocked.run,
            client,
            "await_allocation",
            {"allocation_id": queued["allocation_id"], "block_seconds": 60},
        )
        await until(lambda: len(blocked.progress) == 1)
        # A higher priority goes first: it takes the last free worker.
        await ask(client, "a-more", 1, tenant="team-a", priority="high")
        await until(lambda: len(blocked.progress) == 2)
        # Room frees, but team-a's quota has only 1 worker left for it.
        await call(client, "release_resources", allocation_id=theirs["allocation_id"])
        await until(lambda: len(blocked.progress) == 3)
        group.cancel_scope.cancel()
    assert blocked.messages() == [
        "queued at position 1 of 1 in pool default, waiting for 2 workers (1 free)",
        "queued at position 1 of 1 in pool default, waiting for 2 workers (0 free)",
        "queued at position 1 of 1 in pool default, "
        "waiting for its tenant's quota to allow 2 workers (1 left)",
    ]


def test_a_pending_allocation_is_told_to_wait_for_its_servers(
    service: AllocationService,
) -> None:
    ledger = service.ledger
    result = ledger.request(AllocationRequest(job_id="j", workers=1))
    view = service.read_models.allocation(result.allocation.allocation_id)
    pending = Sighting(dataclasses.replace(view, state="pending"), None)
    assert pending.waiting
    assert progress_message(pending, ledger.clock.now()) == (
        "granted in pool default, waiting for its MCP servers and workers to start"
    )
    assert not Sighting(view, None).waiting  # active: an answer


async def test_a_read_failing_while_waiting_answers_the_request_as_saved(
    client: Client, service: AllocationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ask(client, "holder", 4)

    def unreadable(*_: object, **__: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    # The request is saved; the first read of the wait fails.
    monkeypatch.setattr(service.read_models, "allocation", unreadable)
    reply = await ask(client, "waiter", 1, wait=True, block_seconds=60)
    monkeypatch.undo()
    assert reply["status"] == "queued"  # not an error: it was saved
    assert reply["queue_position"] == 1
    detail = await call(client, "get_allocation", allocation_id=reply["allocation_id"])
    assert detail["state"] == "queued"
