"""Servers sharing one ledger, and servers killed in the middle of work.

Real `allocation-ledger serve --transport http` processes on loopback ports.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import init_database, open_service
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.errors import AllocationNotFoundError
from tests.mcp_support import call, http_client, http_server_process, raw_tool_call
from tests.postgres import (
    DBNAME,
    HOST,
    PORT,
    USER,
    postgres_schema,
    postgres_settings,
)

__all__ = ["postgres_schema"]

pytestmark = pytest.mark.anyio


def postgres_env(schema: str) -> dict[str, str]:
    return {
        "ALLOCATION_LEDGER_STORE": "postgres",
        "ALLOCATION_LEDGER_POSTGRES_HOST": HOST,
        "ALLOCATION_LEDGER_POSTGRES_PORT": str(PORT),
        "ALLOCATION_LEDGER_POSTGRES_USER": USER,
        "ALLOCATION_LEDGER_POSTGRES_DBNAME": DBNAME,
        "ALLOCATION_LEDGER_POSTGRES_SCHEMA": schema,
    }


@pytest.fixture
def postgres_ledger(postgres_schema: str) -> Iterator[tuple[dict[str, str], Settings]]:
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    yield postgres_env(postgres_schema), settings


async def test_two_http_servers_on_one_postgres_ledger(
    postgres_ledger: tuple[dict[str, str], Settings], tmp_path: Path
) -> None:
    env, _ = postgres_ledger
    placeholder = tmp_path / "unused.db"
    with (
        http_server_process(placeholder, "--no-auth", **env) as (first, _),
        http_server_process(placeholder, "--no-auth", **env) as (second, _),
    ):
        async with (
            http_client(first + "/mcp") as one,
            http_client(second + "/mcp") as two,
        ):
            made = await call(
                one,
                "request_resources",
                job_id="job-a",
                mcp_servers=["github"],
                workers=3,
            )
            allocation_id = made["allocation_id"]
            seen = await call(two, "get_allocation", allocation_id=allocation_id)
            assert seen["state"] == "active"
            counted = await call(two, "get_capacity")
            assert counted["allocated_workers"] == 3
            assert counted["running_mcp_servers"] == ["github"]

            # The same MCP server is shared across processes: same port.
            other = await call(
                two,
                "request_resources",
                job_id="job-b",
                mcp_servers=["github"],
                workers=7,
            )
            assert (
                other["mcp_servers"][0]["endpoint"]
                == made["mcp_servers"][0]["endpoint"]
            )
            refused = await call(
                one, "request_resources", job_id="job-c", mcp_servers=[], workers=1
            )
            assert refused["status"] == "failed"

            released = await call(two, "release_resources", allocation_id=allocation_id)
            assert released["status"] == "released"
            after = await call(one, "get_capacity")
            assert after["allocated_workers"] == 7
            listed = await call(one, "list_allocations", state="released")
            assert [a["allocation_id"] for a in listed["allocations"]] == [
                allocation_id
            ]


def batches_of_several(metrics: str) -> float:
    """How many recorded batches held more than one command, from the
    server's /metrics text (group commit's histogram)."""
    name = "allocation_ledger_commit_batch_commands"
    total = single = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name) or 'outcome="recorded"' not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(name + "_count"):
            total = value
        elif line.startswith(name + "_bucket") and 'le="1.0"' in line:
            single = value
    return total - single


async def burst_then_kill(
    url: str, process_id: int, *, acknowledged_before_kill: int, requests: int
) -> tuple[dict[str, dict[str, Any]], str]:
    """Fire requests concurrently; SIGKILL the server after some are answered.

    Returns what each acknowledged request was told, by request_id, and the
    server's /metrics text read just before the kill.
    """
    told: dict[str, dict[str, Any]] = {}
    killed = anyio.Event()
    metrics: list[str] = []

    async def one(client: Any, n: int) -> None:
        request_id = f"burst-{n}"
        try:
            result = await call(
                client,
                "request_resources",
                job_id=f"job-{n}",
                mcp_servers=["github"] if n % 3 == 0 else [],
                workers=n % 2,
                request_id=request_id,
            )
        except Exception:  # noqa: BLE001 - the server died under it
            return
        if killed.is_set():
            return  # answered after the kill: cannot be, but never count it
        told[request_id] = result
        if len(told) >= acknowledged_before_kill and not killed.is_set():
            killed.set()
            async with httpx2.AsyncClient() as plain:
                seen = await plain.get(url.removesuffix("/mcp") + "/metrics")
            metrics.append(seen.text)
            os.kill(process_id, signal.SIGKILL)

    try:
        with anyio.move_on_after(60):
            async with http_client(url) as client, anyio.create_task_group() as group:
                for n in range(requests):
                    group.start_soon(one, client, n)
                    await anyio.sleep(
                        0.001
                    )  # overlapping: recorded several to a commit
    except* Exception:
        # The client's connection broke when the server died: expected then.
        if not killed.is_set():
            raise
    assert killed.is_set(), "the server was never killed"
    return told, metrics[0]


async def check_after_crash(
    settings: Settings, told: dict[str, dict[str, Any]]
) -> None:
    service = open_service(settings)
    try:
        service.read_models.catch_up()
        for request_id, result in told.items():
            # What a client was told stands: active, or refused for capacity
            # (more odd-numbered requests may be answered than the pool has
            # workers for, when the machine is busy).
            view = service.read_models.allocation(result["allocation_id"])
            assert view.state == result["state"], request_id
            assert view.state in {"active", "failed"}, request_id
            assert view.request_id == request_id
        for n in range(200):
            allocation_id = allocation_id_for_request("default", f"burst-{n}")
            try:
                view = service.read_models.allocation(allocation_id)
            except AllocationNotFoundError:
                continue
            # Unacknowledged ones are either absent or whole, never half done.
            assert view.state in {"active", "failed"}, (allocation_id, view.state)
        report = audit.verify(service)
        assert report.clean, report.as_dict()
    finally:
        service.close()


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_server_killed_mid_burst_loses_nothing_it_acknowledged(
    store: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    database = tmp_path / "ledger.db"
    if store == "postgres":
        env, settings = request.getfixturevalue("postgres_ledger")
    else:
        env, settings = {}, Settings(store="sqlite", database=database)
    with http_server_process(database, "--no-auth", **env) as (base, process):
        told, metrics = await burst_then_kill(
            base + "/mcp", process.pid, acknowledged_before_kill=15, requests=60
        )
        process.wait(timeout=10)
        assert process.returncode == -signal.SIGKILL
    assert len(told) >= 15
    # The burst overlapped: commands were recorded several to a commit, so
    # what is checked below is the batched path (group commit).
    assert batches_of_several(metrics) >= 1, metrics
    await check_after_crash(settings, told)

    # A restarted server serves the same ledger, and retries are answered
    # from it: the same allocation, nothing new written.
    with http_server_process(database, "--no-auth", **env) as (base, _):
        async with http_client(base + "/mcp") as client:
            request_id, first = next(iter(told.items()))
            n = int(request_id.split("-")[1])
            again = await call(
                client,
                "request_resources",
                job_id=f"job-{n}",
                mcp_servers=["github"] if n % 3 == 0 else [],
                workers=n % 2,
                request_id=request_id,
            )
            assert again["allocation_id"] == first["allocation_id"]
            assert again["replayed"] is True


def test_stateless_servers_answer_any_request_without_a_session(
    postgres_ledger: tuple[dict[str, str], Settings], tmp_path: Path
) -> None:
    """Behind a load balancer without sticky sessions: each call may land on
    any server, so none may depend on a session another server opened."""
    env, _ = postgres_ledger
    placeholder = tmp_path / "unused.db"
    accept = {"Accept": "application/json, text/event-stream"}
    with (
        http_server_process(placeholder, "--no-auth", "--stateless", **env) as (a, _),
        http_server_process(placeholder, "--no-auth", "--stateless", **env) as (b, _),
    ):
        made = httpx2.post(
            a + "/mcp",
            json=raw_tool_call(
                "request_resources",
                {"job_id": "job-a", "mcp_servers": [], "workers": 2},
            ),
            headers=accept,
            timeout=30,
        )
        assert made.status_code == 200, made.text
        allocation_id = _structured(made.text)["allocation_id"]
        seen = httpx2.post(
            b + "/mcp",
            json=raw_tool_call("get_allocation", {"allocation_id": allocation_id}),
            headers=accept,
            timeout=30,
        )
        assert seen.status_code == 200, seen.text
        assert _structured(seen.text)["state"] == "active"


def _structured(body: str) -> dict[str, Any]:
    """The structured result of a tools/call answered as JSON or as SSE."""
    for line in body.splitlines():
        text = line.removeprefix("data:").strip()
        if text.startswith("{"):
            message = json.loads(text)
            result: dict[str, Any] = message["result"]["structuredContent"]
            return result
    raise AssertionError(f"no JSON-RPC result in {body!r}")
