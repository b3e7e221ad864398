"""PostgreSQL outages, real ones: a server talks to PostgreSQL through a TCP
proxy (tests/tcp_proxy.py) that a test cuts at a chosen moment.

What must hold (issue 13, items 6 and 7): every reply tells the truth about
what was written. A success was saved; an error means nothing was written,
or says the outcome is not known (the connection broke while it was being
committed), names the allocation or pool change in doubt, and how to settle
it; a retry with the request_id settles a request. /healthz answers within
its deadline and names the problem; a command fails within the configured
wait, naming the cause; once the database is back, the server works again
by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp_types import CallToolResult

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
    open_service,
)
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.clock import ManualClock
from tests.mcp_support import (
    call,
    http_client,
    http_server_process,
    max_notification_id,
    text_of,
    unique,
)
from tests.postgres import (
    DBNAME,
    HOST,
    PORT,
    USER,
    postgres_schema,
    postgres_settings,
)
from tests.tcp_proxy import CuttableProxy
from tests.test_server_process import GatedProvisioner

__all__ = ["postgres_schema"]

pytestmark = pytest.mark.anyio

STORE_TIMEOUT = 2
"""The configured wait of the servers under test, in seconds."""
PATIENCE = 30
"""How long a test waits for any one answer: far beyond what a server that
keeps its bounds takes (a few store timeouts), far below an outage's length
on a server that does not (it waited out the whole outage)."""
EVENT_STORE_CONNECTION = b"idle_in_transaction_session_timeout"
"""What only the event store's connections send when they open."""
READ_MODELS = b"ledger_view_position"
"""What a server sends when it reads or writes its read models."""
NOT_KNOWN = "was saved is not known"
NOTHING_WRITTEN = "Nothing was written"


@dataclass
class Outage:
    """A server on PostgreSQL through a proxy, and a way to look behind it."""

    proxy: CuttableProxy
    url: str
    direct: AllocationService
    """A service on the database itself (not through the proxy)."""

    def position(self) -> int:
        """The position of the last event in the log."""
        return max_notification_id(self.direct)

    def state_of(self, allocation_id: str) -> str:
        return self.direct.ledger.allocation(allocation_id).state.value

    def restore(self) -> None:
        if self.proxy.tripped.is_set():
            self.proxy.restore()


def proxied_env(schema: str, port: int) -> dict[str, str]:
    return {
        "ALLOCATION_LEDGER_STORE": "postgres",
        "ALLOCATION_LEDGER_POSTGRES_HOST": "127.0.0.1",
        "ALLOCATION_LEDGER_POSTGRES_PORT": str(port),
        "ALLOCATION_LEDGER_POSTGRES_USER": USER,
        "ALLOCATION_LEDGER_POSTGRES_DBNAME": DBNAME,
        "ALLOCATION_LEDGER_POSTGRES_SCHEMA": schema,
        "ALLOCATION_LEDGER_STORE_TIMEOUT_SECONDS": str(STORE_TIMEOUT),
    }


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    proxy = CuttableProxy((HOST, PORT))
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def outage(
    postgres_schema: str, proxy: CuttableProxy, tmp_path: Path
) -> Iterator[Outage]:
    """A served ledger on PostgreSQL through `proxy`, with a fresh schema."""
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    direct = open_service(settings)
    env = proxied_env(postgres_schema, proxy.port)
    try:
        with http_server_process(tmp_path / "unused.db", "--no-auth", **env) as (
            base,
            _,
        ):
            yield Outage(proxy, base, direct)
    finally:
        direct.close()


async def tool(client: Client, name: str, **arguments: Any) -> CallToolResult:
    """Call a tool, success or not, within PATIENCE."""
    with anyio.fail_after(PATIENCE):
        return await client.call_tool(name, arguments)


# -- a failure after the commit does not turn a success into an error -----------


async def test_a_request_whose_read_models_fail_after_its_commit_answers_what_it_saved(
    outage: Outage,
) -> None:
    async with http_client(outage.url + "/mcp") as client:
        await call(client, "get_capacity")
        request_id = unique("req")
        outage.proxy.cut_when_sent(READ_MODELS)
        reply = await tool(
            client,
            "request_resources",
            job_id="job-a",
            mcp_servers=[],
            workers=2,
            request_id=request_id,
        )
        outage.proxy.disarm()
        # The reply rests on nothing read after the commit: a success, and true.
        assert not reply.is_error, text_of(reply)
        made = reply.structured_content or {}
        assert made["status"] == "active"
        assert made["workers_allocated"][0]["cpu"] == 1.0
        assert outage.state_of(made["allocation_id"]) == "active"

        # A queued request's reply reads its place in the queue after the
        # commit; that read fails here, and the reply still tells the truth.
        await call(client, "set_capacity", workers=2)
        outage.proxy.cut_when_sent(READ_MODELS)
        reply = await tool(
            client,
            "request_resources",
            job_id="job-b",
            mcp_servers=[],
            workers=1,
            wait=True,
        )
        outage.proxy.disarm()
        assert outage.proxy.tripped.is_set(), "the read after the commit was cut"
        assert not reply.is_error, text_of(reply)
        queued = reply.structured_content or {}
        assert queued["status"] == "queued"
        assert queued["waiting_for"]["dimension"] == "workers"
        assert "queue_position" not in queued  # it could not be read
        assert outage.state_of(queued["allocation_id"]) == "queued"

        outage.restore()
        seen = await eventually(
            client, "get_allocation", allocation_id=queued["allocation_id"]
        )
        assert seen["state"] == "queued"


async def test_a_command_whose_first_read_fails_wrote_nothing_and_says_so(
    outage: Outage,
) -> None:
    async with http_client(outage.url + "/mcp") as client:
        await call(client, "get_capacity")
        before = outage.position()
        # set_capacity reads the pool's totals before it changes them.
        outage.proxy.cut_when_sent(READ_MODELS)
        reply = await tool(client, "set_capacity", workers=12)
        outage.proxy.disarm()
        assert reply.is_error
        assert "the ledger's database" in text_of(reply)
        assert NOTHING_WRITTEN in text_of(reply)
        assert outage.position() == before

        outage.restore()
        after = await eventually(client, "get_capacity")
        assert after["total_workers"] == 10


# -- a commit whose answer is lost: the outcome is not known, and says so -------


async def _request_with_id(outage: Outage, client: Client) -> None:
    request_id = unique("req")
    allocation_id = allocation_id_for_request("default", request_id)
    arguments = {"job_id": "job-a", "mcp_servers": [], "workers": 3}
    text = await cut_while_committing(
        outage, client, "request_resources", request_id=request_id, **arguments
    )
    assert allocation_id in text
    assert repr(request_id) in text
    assert outage.state_of(allocation_id) == "active"  # it was committed
    outage.restore()
    again = await eventually(
        client, "request_resources", request_id=request_id, **arguments
    )
    assert again["allocation_id"] == allocation_id
    assert again["replayed"] is True
    capacity = await call(client, "get_capacity")
    assert capacity["allocated_workers"] == 3  # one allocation, not two


async def _request_without_id(outage: Outage, client: Client) -> None:
    text = await cut_while_committing(
        outage, client, "request_resources", job_id="job-a", mcp_servers=[], workers=1
    )
    assert "get_allocation alloc-" in text
    allocation_id = text.split("get_allocation ", 1)[1].split()[0]
    outage.restore()
    seen = await eventually(client, "get_allocation", allocation_id=allocation_id)
    assert seen["state"] == "active"


async def _release(outage: Outage, client: Client) -> None:
    made = await call(
        client, "request_resources", job_id="job-a", mcp_servers=[], workers=1
    )
    allocation_id = made["allocation_id"]
    text = await cut_while_committing(
        outage, client, "release_resources", allocation_id=allocation_id
    )
    assert allocation_id in text
    assert "release_resources again is safe" in text
    outage.restore()
    again = await eventually(client, "release_resources", allocation_id=allocation_id)
    assert again["status"] == "already_released"


async def _renew(outage: Outage, client: Client) -> None:
    made = await call(
        client, "request_resources", job_id="job-a", mcp_servers=[], workers=1
    )
    allocation_id = made["allocation_id"]
    text = await cut_while_committing(
        outage, client, "renew_allocation", allocation_id=allocation_id
    )
    assert f"get_allocation {allocation_id} shows whether expires_at moved" in text
    outage.restore()
    seen = await eventually(client, "get_allocation", allocation_id=allocation_id)
    assert seen["renewals"] == 1


async def _set_capacity(outage: Outage, client: Client) -> None:
    text = await cut_while_committing(outage, client, "set_capacity", workers=12)
    assert "the change to pool 'default'" in text
    assert "Calling set_capacity again with the same arguments is safe" in text
    outage.restore()
    again = await eventually(client, "set_capacity", workers=12)
    assert again["changed"] is False
    assert again["total_workers"] == 12


async def _set_quota(outage: Outage, client: Client) -> None:
    text = await cut_while_committing(
        outage, client, "set_quota", tenant="team-a", workers=3
    )
    assert "the change to pool 'default'" in text
    outage.restore()
    again = await eventually(client, "set_quota", tenant="team-a", workers=3)
    assert again["changed"] is False


async def _set_scheduling(outage: Outage, client: Client) -> None:
    text = await cut_while_committing(
        outage, client, "set_scheduling", queue_policy="backfill"
    )
    assert "the change to pool 'default'" in text
    outage.restore()
    again = await eventually(client, "set_scheduling", queue_policy="backfill")
    assert again["changed"] is False


CUT_WHILE_COMMITTING = {
    "request_resources with a request_id": _request_with_id,
    "request_resources without one": _request_without_id,
    "release_resources": _release,
    "renew_allocation": _renew,
    "set_capacity": _set_capacity,
    "set_quota": _set_quota,
    "set_scheduling": _set_scheduling,
}


@pytest.mark.parametrize("command", list(CUT_WHILE_COMMITTING))
async def test_a_command_cut_while_committing_says_the_outcome_is_not_known(
    outage: Outage, command: str
) -> None:
    async with http_client(outage.url + "/mcp") as client:
        await call(client, "get_capacity")
        await CUT_WHILE_COMMITTING[command](outage, client)


async def cut_while_committing(
    outage: Outage, client: Client, name: str, **arguments: Any
) -> str:
    """Call a command whose commit is carried out but whose answer is lost;
    the text of its error, which must say so."""
    outage.proxy.cut_after_commit(EVENT_STORE_CONNECTION)
    reply = await tool(client, name, **arguments)
    assert outage.proxy.tripped.is_set(), "the commit was cut"
    assert reply.is_error, text_of(reply)
    text = text_of(reply)
    assert NOT_KNOWN in text, text
    assert "the connection to the ledger's database was lost" in text, text
    return text


async def test_cleanup_cut_while_committing_says_the_outcome_is_not_known(
    postgres_schema: str, proxy: CuttableProxy, caplog: pytest.LogCaptureFixture
) -> None:
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    clock = ManualClock()
    proxied = settings.model_copy(
        update={"postgres_port": proxy.port, "store_timeout_seconds": STORE_TIMEOUT}
    )
    service = open_service(proxied, clock=clock)
    try:
        # In memory, on a manual clock (leases must run out), so the sweeper
        # a server runs at start must not expire the lease before the tool
        # does: its first round is made to fail, and the next is minutes off.
        proxy.cut()
        async with Client(stdio_server(service)) as client:
            with anyio.fail_after(PATIENCE):
                while "expiry sweep failed" not in caplog.text:
                    await anyio.sleep(0.05)
            proxy.restore()
            made = await eventually(
                client,
                "request_resources",
                job_id="job-a",
                mcp_servers=[],
                workers=1,
                ttl_seconds=60,
                request_id="lease-a",
            )
            clock.advance(120)
            proxy.cut_after_commit(EVENT_STORE_CONNECTION)
            reply = await tool(client, "cleanup_expired")
            assert proxy.tripped.is_set()
            assert reply.is_error
            assert NOT_KNOWN in text_of(reply)
            assert made["allocation_id"] in text_of(reply)
            assert "Calling cleanup_expired again" in text_of(reply)
            proxy.restore()
            again = await eventually(client, "cleanup_expired")
            assert again["count"] == 0  # the first one was committed
            seen = await call(
                client, "get_allocation", allocation_id=made["allocation_id"]
            )
            assert seen["state"] == "expired"
    finally:
        service.close()


async def test_a_request_whose_activation_cannot_be_saved_says_what_was_saved(
    postgres_schema: str, proxy: CuttableProxy
) -> None:
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    gate = GatedProvisioner()  # provisions between two transactions
    proxied = settings.model_copy(
        update={"postgres_port": proxy.port, "store_timeout_seconds": STORE_TIMEOUT}
    )
    service = open_service(proxied, provisioner=gate)
    request_id = unique("req")
    arguments = {"job_id": "job-a", "mcp_servers": [], "workers": 1}
    try:
        async with Client(stdio_server(service)) as client:
            replies: list[CallToolResult] = []

            async def ask() -> None:
                replies.append(
                    await tool(
                        client, "request_resources", request_id=request_id, **arguments
                    )
                )

            async with anyio.create_task_group() as group:
                group.start_soon(ask)
                with anyio.fail_after(PATIENCE):
                    while not gate.entered.is_set():  # reserved and committed
                        await anyio.sleep(0.02)
                proxy.cut()
                gate.go.set()
            (reply,) = replies
            assert reply.is_error
            text = text_of(reply)
            allocation_id = allocation_id_for_request("default", request_id)
            assert (
                f"Saved before the failure: allocation {allocation_id} (pending)."
                in text
            ), text
            assert "Nothing more was written." in text
            assert f"request_id {request_id!r} to finish it" in text

            proxy.restore()
            done = await eventually(
                client, "request_resources", request_id=request_id, **arguments
            )
            assert done["allocation_id"] == allocation_id
            assert done["status"] == "active"
            assert done["replayed"] is True
    finally:
        service.close()


# -- an outage: bounded, named, and over by itself --------------------------------


async def test_an_outage_is_named_by_health_and_commands_and_ends_by_itself(
    outage: Outage,
) -> None:
    health = outage.url + "/healthz"
    assert httpx2.get(health, timeout=PATIENCE).json()["status"] == "ok"
    async with http_client(outage.url + "/mcp") as client:
        await call(client, "get_capacity")
        before = outage.position()
        outage.proxy.cut()

        answer = httpx2.get(health, timeout=PATIENCE)
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "unavailable",
            "store": "postgres",
            "problem": "the ledger's database is unreachable: connection refused",
        }

        # Several commands at once: each fails within the configured wait (a
        # few times over at most), naming the cause, and wrote nothing.
        replies: list[CallToolResult] = []

        async def request(n: int) -> None:
            replies.append(
                await tool(
                    client,
                    "request_resources",
                    job_id=f"job-{n}",
                    mcp_servers=[],
                    workers=1,
                    request_id=f"outage-{n}",
                )
            )

        async with anyio.create_task_group() as group:
            for n in range(4):
                group.start_soon(request, n)
        for reply in replies:
            assert reply.is_error
            text = text_of(reply)
            assert "Error executing tool request_resources:" in text
            assert "the ledger's database" in text, text
            assert NOTHING_WRITTEN in text, text
        assert any("unreachable: connection refused" in text_of(r) for r in replies)
        assert outage.position() == before

        outage.proxy.restore()
        with anyio.fail_after(PATIENCE):
            while True:
                answer = httpx2.get(health, timeout=PATIENCE)
                if answer.status_code == 200:
                    break
                await anyio.sleep(0.1)
        assert answer.json() == {
            "status": "ok",
            "store": "postgres",
            "last_position": before,
        }
        made = await eventually(
            client,
            "request_resources",
            job_id="job-0",
            mcp_servers=[],
            workers=1,
            request_id="outage-0",
        )
        assert made["replayed"] is False  # the failed try wrote nothing
        assert outage.state_of(made["allocation_id"]) == "active"


async def eventually(client: Client, name: str, **arguments: Any) -> dict[str, Any]:
    """The result of a tool once the server works again (within PATIENCE)."""
    with anyio.fail_after(PATIENCE):
        while True:
            reply = await client.call_tool(name, arguments)
            if not reply.is_error:
                assert reply.structured_content is not None
                return dict(reply.structured_content)
            await anyio.sleep(0.2)
