"""Commits whose answer is lost: a TCP proxy in front of PostgreSQL (tests/
tcp_proxy.py) lets a COMMIT through, waits for the database to carry it out,
and cuts before its answer reaches the server (issue 13, item 7).

Every command tool then fails saying that whether its write was saved is not
known, names the allocation or pool change in doubt and how to settle it; the
settling (for a request, a retry with its request_id) finds what the database
really holds. A request saved in part (reserved, not activated) says what was
saved.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult

from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.storage.service import init_database, open_service
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.clock import ManualClock
from tests.mcp_support import call, http_client, text_of, unique
from tests.outage_support import (
    EVENT_STORE_CONNECTION,
    NOT_KNOWN,
    PATIENCE,
    STORE_TIMEOUT,
    Outage,
    eventually,
    outage,
    proxy,
    tool,
)
from tests.postgres import postgres_schema, postgres_settings
from tests.tcp_proxy import CuttableProxy
from tests.test_server_process import GatedProvisioner

__all__ = ["outage", "postgres_schema", "proxy"]

pytestmark = pytest.mark.anyio

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
