"""PostgreSQL outages, real ones: a server talks to PostgreSQL through a TCP
proxy (tests/tcp_proxy.py) that a test cuts at a chosen moment.

Here: a read after a command's commit fails, a command's first read fails, and
the database is gone for a while (issue 13, items 6 and 7). Every reply tells
the truth about what was written: a success was saved, an error means nothing
was written. /healthz answers within its deadline and names the problem; a
command fails within the configured wait, naming the cause; once the database
is back, the server works again by itself. Commits whose answer is lost:
tests/test_commit_outcomes.py.
"""

from __future__ import annotations

import anyio
import httpx2
import pytest
from mcp_types import CallToolResult

from tests.mcp_support import call, http_client, text_of, unique
from tests.outage_support import (
    NOTHING_WRITTEN,
    PATIENCE,
    READ_MODELS,
    Outage,
    eventually,
    outage,
    proxy,
    tool,
)
from tests.postgres import postgres_schema

__all__ = ["outage", "postgres_schema", "proxy"]

pytestmark = pytest.mark.anyio

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
        # The server's change feed reads what set_capacity wrote (within
        # moments of the write); a read of the read models, which waits for
        # it, leaves the trip wire to this request's own read.
        await call(client, "get_capacity")
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
