"""Helpers for the MCP server tests: calling tools, servers in subprocesses,
and the original resource manager's behaviours as one scenario that runs over
every transport."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult, TextContent

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import AllocationService, open_service

REPO = Path(__file__).resolve().parent.parent
OpenMemory = Callable[..., AllocationService]
"""What the `open_memory` fixture gives: opens an in-memory service on the test's
clock; its keyword arguments are settings."""
ORIGINAL_REQUEST_KEYS = {
    "allocation_id",
    "status",
    "job_id",
    "mcp_servers",
    "workers_allocated",
    "resources",
    "ttl_seconds",
    "created_at",
}
ORIGINAL_RELEASE_KEYS = {
    "status",
    "allocation_id",
    "job_id",
    "workers_released",
    "cpu_freed",
    "memory_freed",
    "released_at",
    "duration_seconds",
}
ORIGINAL_CAPACITY_KEYS = {
    "total_cpu",
    "total_memory",
    "total_workers",
    "allocated_cpu",
    "allocated_memory",
    "allocated_workers",
    "available_cpu",
    "available_memory",
    "available_workers",
    "running_mcp_servers",
    "active_allocations",
}


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool that must succeed; its structured result."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}({arguments}) failed: {text_of(result)}"
    assert result.structured_content is not None
    return dict(result.structured_content)


async def call_error(client: Client, tool: str, arguments: Mapping[str, Any]) -> str:
    """Call a tool that must fail with a tool error; the error's text."""
    result = await client.call_tool(tool, dict(arguments))
    assert result.is_error, f"{tool}({arguments}) should fail: {text_of(result)}"
    assert result.structured_content is None
    return text_of(result)


def is_utc_iso(value: object) -> bool:
    """ISO 8601 with an explicit +00:00 offset."""
    if not isinstance(value, str) or not value.endswith("+00:00"):
        return False
    return datetime.fromisoformat(value).utcoffset() is not None


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def max_notification_id(service: AllocationService) -> int:
    return service.projector.log.max_notification_id() or 0


@contextmanager
def sqlite_service(database: Path) -> Iterator[AllocationService]:
    """A second view onto a server's SQLite file, to see what it wrote."""
    service = open_service(Settings(store="sqlite", database=database))
    try:
        yield service
    finally:
        service.close()


# -- servers in subprocesses ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def server_env(database: Path, **extra: str) -> dict[str, str]:
    """Environment for a served ledger on a SQLite file (nothing else inherited)."""
    env = {
        "ALLOCATION_LEDGER_STORE": "sqlite",
        "ALLOCATION_LEDGER_DATABASE": str(database),
        "ALLOCATION_LEDGER_LOG_LEVEL": "WARNING",
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(extra)
    return env


def stdio_params(database: Path, **extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "allocation_ledger.adapters.cli", "serve"],
        env=server_env(database, **extra),
        cwd=str(database.parent),
    )


def http_server_process(
    database: Path, *arguments: str, **env: str
) -> AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]:
    """`allocation-ledger serve --transport http` on a free port; its base URL."""
    return served_over_http(database, arguments, env)


@contextmanager
def served_over_http(
    database: Path,
    arguments: Sequence[str],
    env: Mapping[str, str],
    *,
    stderr: IO[bytes] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`allocation-ledger serve --transport http ARGUMENTS` on a free port of
    the address after `--host` (default 127.0.0.1), with `env`; its base URL.
    Its log goes to `stderr` (default: the test's)."""
    bind = "127.0.0.1"
    if "--host" in arguments:
        bind = arguments[list(arguments).index("--host") + 1]
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "allocation_ledger.adapters.cli",
            "serve",
            "--transport",
            "http",
            "--port",
            str(port),
            *arguments,
        ],
        env={**os.environ, **server_env(database, **env)},
        cwd=database.parent,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    base = f"http://{bind}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                msg = f"the HTTP server exited with {process.returncode}"
                raise RuntimeError(msg)
            try:
                if httpx2.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                msg = "the HTTP server did not become healthy in 30 s"
                raise RuntimeError(msg)
            time.sleep(0.05)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@asynccontextmanager
async def http_client(url: str, token: str | None = None) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP, with a bearer token if given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def raw_tool_call(tool: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-RPC tools/call body, for requests made without an MCP client."""
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": dict(arguments)},
    }


# -- the original behaviours, over any transport -------------------------------


async def original_behaviours(client: Client) -> dict[str, Any]:
    """Request, refuse, inspect, renew, release and release again, as the
    original manager's users did; checks the original keys and wording.

    Works on a ledger that already holds other allocations: amounts are
    checked relative to the capacity at the start. Returns the history of
    the first allocation, for transport-specific checks of its actor.
    """
    before = await call(client, "get_capacity")
    assert before.keys() >= ORIGINAL_CAPACITY_KEYS
    assert before["available_workers"] >= 7, "the scenario needs 7 free workers"

    job = unique("job")
    first = await call(
        client,
        "request_resources",
        job_id=job,
        mcp_servers=["filesystem", "github"],
        workers=4,
        priority="high",
        ttl_seconds=7200,
        metadata={"task_type": "feature"},
    )
    assert first.keys() >= ORIGINAL_REQUEST_KEYS
    assert first["status"] == "active"
    assert "error" not in first
    assert first["resources"] == {"cpu": 4.0, "memory": 8192, "workers": 4}
    assert first["ttl_seconds"] == 7200
    assert is_utc_iso(first["created_at"])
    assert is_utc_iso(first["expires_at"])
    assert [s["name"] for s in first["mcp_servers"]] == ["filesystem", "github"]
    assert all(s["status"] == "running" for s in first["mcp_servers"])
    assert all(s["endpoint"].startswith("http://") for s in first["mcp_servers"])
    workers = first["workers_allocated"]
    assert len(workers) == 4
    assert {(w["cpu"], w["memory"]) for w in workers} == {(1.0, 2048)}
    assert len({w["endpoint"] for w in workers}) == 4
    allocation_id = first["allocation_id"]

    second = await call(
        client, "request_resources", job_id=job, mcp_servers=["github"], workers=3
    )
    assert second["status"] == "active"
    github = {s["name"]: s for s in first["mcp_servers"]}["github"]
    assert second["mcp_servers"][0]["endpoint"] == github["endpoint"]  # shared
    assert second["mcp_servers"][0]["started"] is False
    ports = {w["port"] for w in workers} | {
        w["port"] for w in second["workers_allocated"]
    }
    assert len(ports) == 7  # worker endpoints never collide

    during = await call(client, "get_capacity")
    assert during["allocated_workers"] == before["allocated_workers"] + 7
    assert during["allocated_cpu"] == before["allocated_cpu"] + 7.0
    assert during["allocated_memory"] == before["allocated_memory"] + 7 * 2048
    assert during["available_workers"] == before["available_workers"] - 7
    assert during["active_allocations"] == before["active_allocations"] + 2
    assert {"filesystem", "github"} <= set(during["running_mcp_servers"])

    wanted = during["available_workers"] + 1
    refused = await call(
        client, "request_resources", job_id=job, mcp_servers=[], workers=wanted
    )
    assert refused["status"] == "failed"
    assert refused["error"] == (
        f"Insufficient workers: requested {wanted}, "
        f"available {during['available_workers']}"
    )
    assert refused["reason"] == {
        "code": "insufficient_capacity",
        "dimension": "workers",
        "requested": wanted,
        "available": during["available_workers"],
    }
    assert await call(client, "get_capacity") == during  # nothing reserved

    detail = await call(client, "get_allocation", allocation_id=allocation_id)
    assert detail["state"] == "active"
    assert detail["priority"] == "high"
    assert detail["resources"] == {
        "cpu_allocated": 4.0,
        "memory_allocated": 8192,
        "workers": 4,
    }
    assert detail["metadata"] == {"task_type": "feature"}
    assert detail["is_expired"] is False
    assert all(
        is_utc_iso(detail["timestamps"][k]) for k in ("created_at", "expires_at")
    )

    listed = await call(client, "list_allocations", job_id=job)
    assert [a["allocation_id"] for a in listed["allocations"]] == [
        allocation_id,
        second["allocation_id"],
        refused["allocation_id"],
    ]
    assert [a["state"] for a in listed["allocations"]] == ["active", "active", "failed"]
    active = await call(client, "list_allocations", job_id=job, state="active")
    assert active["count"] == 2

    renewed = await call(
        client, "renew_allocation", allocation_id=allocation_id, ttl_seconds=600
    )
    assert renewed["status"] == "renewed"
    renewed_until = datetime.fromisoformat(renewed["expires_at"])
    assert renewed_until < datetime.fromisoformat(first["expires_at"])

    released = await call(client, "release_resources", allocation_id=allocation_id)
    assert released.keys() >= ORIGINAL_RELEASE_KEYS
    assert released["status"] == "released"
    assert released["workers_released"] == 4
    assert released["cpu_freed"] == 4.0
    assert released["memory_freed"] == 8192
    assert is_utc_iso(released["released_at"])
    assert released["duration_seconds"] >= 0

    again = await call(client, "release_resources", allocation_id=allocation_id)
    assert again["status"] == "already_released"
    assert again["workers_released"] == 0

    # The original drove active_allocations to -1 here.
    failed = await call(
        client, "release_resources", allocation_id=refused["allocation_id"]
    )
    assert failed["status"] == "failed"
    assert failed["workers_released"] == 0

    nothing_due = await call(client, "cleanup_expired")
    assert set(nothing_due) >= {"cleaned_up", "count"}
    assert allocation_id not in nothing_due["cleaned_up"]

    await call(client, "release_resources", allocation_id=second["allocation_id"])
    after = await call(client, "get_capacity")
    for key in ("allocated_workers", "allocated_cpu", "allocated_memory"):
        assert after[key] == before[key]
    assert after["active_allocations"] == before["active_allocations"]
    assert {"filesystem", "github"} <= set(after["running_mcp_servers"])  # idle

    history = await call(client, "get_allocation_history", allocation_id=allocation_id)
    assert [e["event"] for e in history["events"]] == [
        "requested",
        "activated",
        "renewed",
        "release_requested",
        "released",
    ]
    assert all(is_utc_iso(e["at"]) for e in history["events"])

    resource = await client.read_resource(f"ledger://allocations/{allocation_id}")
    content = resource.contents[0]
    assert content.mime_type == "application/json"
    assert json.loads(content.text)["state"] == "released"  # type: ignore[union-attr]
    return history
