"""`allocation-ledger demo`: the real server over stdio, driven by a real MCP
client through requests, a retry, a refusal, a request that waits in the
call until another agent releases, a renewal and releases, with a
real MCP server (the reference `mcp-server-time`) started on demand, called
by an agent at the endpoint the ledger handed out, shared, and stopped once
idle."""

from __future__ import annotations

import importlib.util
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
from rich.console import Console

from allocation_ledger.adapters.cli.console import (
    PROG,
    allocations_table,
    capacity_summary_table,
    fail,
    history_table,
)
from allocation_ledger.adapters.cli.demo_setup import (
    IDLE_STOP_BOUND_SECONDS,
    IDLE_TIMEOUT_SECONDS,
    SERVER,
    child_env,
    demo_catalog,
    parse_port_range,
    server_command,
)
from allocation_ledger.adapters.config.settings import Settings

Call = Callable[..., Awaitable[dict[str, Any]]]


class DemoError(Exception):
    """A tool call in the demo came back as an error, or something it shows
    did not happen."""


async def _drive_demo(
    settings: Settings, console: Console, mcp_ports: tuple[int, int] | None
) -> None:
    with tempfile.TemporaryDirectory(prefix="allocation-ledger-demo-") as directory:
        config = Path(directory) / "ledger.toml"
        config.write_text(demo_catalog(mcp_ports))
        await _drive_server(settings, console, config)


async def _drive_server(settings: Settings, console: Console, config: Path) -> None:
    from mcp import Client, StdioServerParameters
    from mcp_types import TextContent

    command, arguments = server_command()
    params = StdioServerParameters(
        command=command, args=arguments, env=child_env(settings, config)
    )
    run = uuid.uuid4().hex[:8]

    async with Client(params) as client:
        from mcp.shared.dispatcher import ProgressFnT

        async def call(
            tool: str, *, on_progress: ProgressFnT | None = None, **arguments: Any
        ) -> dict[str, Any]:
            shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
            console.print(f"[bold cyan]→ {tool}[/]({shown})")
            result = await client.call_tool(
                tool, arguments, progress_callback=on_progress
            )
            text = " ".join(
                c.text for c in result.content if isinstance(c, TextContent)
            )
            if result.is_error:
                raise DemoError(f"{tool} failed: {text}")
            if result.structured_content is None:
                raise DemoError(f"{tool} returned no structured content")
            return dict(result.structured_content)

        info = client.server_info
        tools = await client.list_tools()
        name = f"{info.name} {info.version}" if info is not None else PROG
        console.print(
            f"[bold]Connected over stdio to {name}[/] "
            f"(started as `{command} {' '.join(arguments)}`), "
            f"{len(tools.tools)} tools: {', '.join(t.name for t in tools.tools)}"
        )
        where = (
            f"SQLite file {settings.database.resolve()}"
            if settings.store == "sqlite"
            else f"{settings.store} store"
        )
        console.print(f"Ledger: {where}")
        console.print(
            f"Catalog: one MCP server, [bold]{SERVER}[/] (`{sys.executable} -m "
            f"mcp_server_time`, over stdio, bridged by the ledger to streamable "
            f"HTTP), idle timeout {IDLE_TIMEOUT_SECONDS} s"
        )

        capacity = await call("get_capacity")
        console.print(capacity_summary_table(capacity))

        research: dict[str, Any] = {
            "job_id": "demo-research",
            "mcp_servers": [SERVER],
            "workers": 2,
            "request_id": f"demo-{run}-research",
            "metadata": {"demo_run": run},
        }
        began = time.monotonic()
        first = await call("request_resources", **research)
        _show_request(console, first, time.monotonic() - began)
        again = await call("request_resources", **research)  # the same request again
        console.print(
            f"  retry with the same request_id: {again['allocation_id']} "
            f"(replayed={again['replayed']}); nothing new was reserved"
        )
        if first["status"] != "active":
            raise DemoError(_first_request_failed(first))
        await _agent_calls_the_server(console, _endpoint(first))

        began = time.monotonic()
        second = await call(
            "request_resources",
            job_id="demo-review",
            mcp_servers=[SERVER],
            workers=1,
            metadata={"demo_run": run},
        )
        _show_request(console, second, time.monotonic() - began)
        if first["status"] == second["status"] == "active":
            shared = _endpoint(first) == _endpoint(second)
            console.print(
                f"  {SERVER} is shared: the same endpoint, "
                f"{'the same process' if shared else 'NOT the same endpoint'}"
            )
            if not shared:
                raise DemoError("the second allocation did not share the server")

        capacity = await call("get_capacity")
        too_big = await call(
            "request_resources",
            job_id="demo-too-big",
            mcp_servers=[],
            workers=int(capacity["available_workers"]) + 1,
            metadata={"demo_run": run},
        )
        _show_request(console, too_big)

        listing = await call("list_allocations", state="active")
        console.print(allocations_table(listing["allocations"]))

        granted = [r for r in (first, second) if r["status"] == "active"]
        if len(granted) == 2:
            # The second agent's allocation goes to a waiting agent instead.
            waiter = await _one_agent_waits_for_another(console, call, second, run)
            granted = [first, waiter]
        if granted:
            renewed = await call(
                "renew_allocation",
                allocation_id=granted[0]["allocation_id"],
                ttl_seconds=7200,
            )
            console.print(f"  lease now ends at {renewed['expires_at']}")
        for result in granted:
            released = await call(
                "release_resources", allocation_id=result["allocation_id"]
            )
            console.print(
                f"  {released['status']}: {released['workers_released']} workers, "
                f"{released['cpu_freed']:g} cores, {released['memory_freed']} MB freed"
            )
        if granted:
            repeat = await call(
                "release_resources", allocation_id=granted[0]["allocation_id"]
            )
            console.print(f"  releasing again: {repeat['status']}")
            history = await call(
                "get_allocation_history", allocation_id=granted[0]["allocation_id"]
            )
            console.print(history_table(history))

        capacity = await call("get_capacity")
        console.print(capacity_summary_table(capacity))
        if granted:
            await _wait_for_idle_stop(console, call, _endpoint(granted[0]))


async def _one_agent_waits_for_another(
    console: Console, call: Call, holder: Mapping[str, Any], run: str
) -> dict[str, Any]:
    """An agent asks for more workers than are free, with wait=true and
    block_seconds: its call waits in the queue, told its place by progress
    notifications, and returns active as soon as `holder` is released."""
    capacity = await call("get_capacity")
    free = int(capacity["available_workers"])
    wanted = free + int(holder["resources"]["workers"])
    console.print(
        f"[bold magenta]agent B[/] needs {wanted} workers, {free} are free: it "
        "asks with wait=true and block_seconds=60, so its call waits for them"
    )
    told = anyio.Event()

    async def progress(
        progress: float, total: float | None, message: str | None
    ) -> None:
        console.print(f"  [magenta]progress {progress:g}[/]: {message}")
        told.set()

    answer: dict[str, Any] = {}

    async def ask() -> None:
        answer.update(
            await call(
                "request_resources",
                on_progress=progress,
                job_id="demo-waiter",
                mcp_servers=[],
                workers=wanted,
                wait=True,
                block_seconds=60,
                metadata={"demo_run": run},
            )
        )

    async with anyio.create_task_group() as group:
        group.start_soon(ask)
        with anyio.fail_after(30):
            await told.wait()
        console.print(f"[bold magenta]agent A[/] releases {holder['allocation_id']}")
        released_at = time.monotonic()
        await call("release_resources", allocation_id=holder["allocation_id"])
    waited = time.monotonic() - released_at
    _show_request(console, answer)
    if answer.get("status") != "active":
        raise DemoError(f"the waiting request was not granted: {answer}")
    console.print(
        f"  agent B's call returned {waited:.2f} s after agent A's release: "
        "granted in the release's own transaction"
    )
    return answer


def _endpoint(result: Mapping[str, Any]) -> str:
    [server] = [s for s in result["mcp_servers"] if s["name"] == SERVER]
    return str(server["endpoint"])


async def _agent_calls_the_server(console: Console, endpoint: str) -> None:
    """An agent connects to the endpoint it was handed (streamable HTTP, the
    official client) and calls the server's get_current_time."""
    from mcp import Client
    from mcp_types import TextContent

    console.print(
        f"[bold magenta]agent[/] connects to {endpoint} (streamable HTTP) "
        "and calls get_current_time(timezone='UTC')"
    )
    async with Client(endpoint) as agent:
        tools = await agent.list_tools()
        answer = await agent.call_tool("get_current_time", {"timezone": "UTC"})
    text = " ".join(c.text for c in answer.content if isinstance(c, TextContent))
    if answer.is_error:
        raise DemoError(f"get_current_time at {endpoint} failed: {text}")
    served = answer.structured_content or {}
    console.print(
        f"  {SERVER} offers {', '.join(t.name for t in tools.tools)}; "
        f"it answered: current time {served.get('datetime', text)} "
        f"({served.get('timezone', '?')})"
    )


async def _wait_for_idle_stop(console: Console, call: Call, endpoint: str) -> None:
    """Poll get_capacity until the idle server is no longer running (bounded)."""
    console.print(
        f"Nobody uses {SERVER} now: it is idle, and is stopped after its idle "
        f"timeout ({IDLE_TIMEOUT_SECONDS} s); polling get_capacity"
    )
    began = time.monotonic()
    while True:
        await anyio.sleep(1.0)
        capacity = await call("get_capacity")
        servers = {s["name"]: s for s in capacity["mcp_servers"]}
        waited = time.monotonic() - began
        if SERVER not in capacity["running_mcp_servers"]:
            break
        console.print(
            f"  after {waited:.0f} s: {SERVER} is {servers[SERVER]['status']}"
            if SERVER in servers
            else f"  after {waited:.0f} s: {SERVER} is still listed as running"
        )
        if waited > IDLE_STOP_BOUND_SECONDS:
            raise DemoError(f"{SERVER} was not stopped {waited:.0f} s after release")
    # The pool frees the port in its books first (ServerStopped); the process
    # is then stopped, and its status is "stopped" once the port refuses.
    while (await call("get_mcp_status", name=SERVER))["status"] != "stopped":
        waited = time.monotonic() - began
        if waited > IDLE_STOP_BOUND_SECONDS:
            raise DemoError(
                f"{SERVER}'s process still runs {waited:.0f} s after release"
            )
        await anyio.sleep(0.1)
    where = urlsplit(endpoint)
    refused = _refuses_connections(where.hostname or "localhost", where.port or 80)
    console.print(
        f"  after {waited:.0f} s: [bold]{SERVER} stopped[/]: running MCP servers: "
        f"{', '.join(capacity['running_mcp_servers']) or 'none'}; its port "
        f"{where.port} {'refuses connections' if refused else 'still answers'}"
    )


def _refuses_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return False
    except OSError:
        return True


def _first_request_failed(result: Mapping[str, Any]) -> str:
    """Why the demo cannot go on: its first request (which starts `time`)
    failed; with the fix when another program holds the server's port."""
    message = f"the demo's first request failed, so it stops here: {result['error']}"
    if "already in use" in str(result.get("error")):
        message += (
            "\nFor the demo, the simplest fix is other ports: "
            "`allocation-ledger demo --mcp-ports 62000-62009`"
        )
    return message


def _show_request(
    console: Console, result: Mapping[str, Any], seconds: float | None = None
) -> None:
    allocation = result["allocation_id"]
    if result["status"] != "active":
        reason = result.get("reason") or {}
        facts = ", ".join(f"{k} {v}" for k, v in reason.items())
        console.print(
            f"  {allocation}: [bold red]{result['status']}[/] - "
            f"{result.get('error')}" + (f" ({facts})" if facts else "")
        )
        return
    servers = ", ".join(
        f"{s['name']} {s['endpoint']}"
        + (" (started for it)" if s.get("started") else " (already running)")
        for s in result["mcp_servers"]
    )
    workers = ", ".join(w["endpoint"] for w in result["workers_allocated"])
    took = f" after {seconds:.2f} s" if seconds is not None else ""
    console.print(
        f"  {allocation}: [bold green]active[/]{took} until {result['expires_at']}; "
        f"MCP servers: {servers or 'none'}; workers: {workers or 'none'}"
    )


def run_demo(settings: Settings, console: Console, mcp_ports: str | None = None) -> int:
    """Start the real server over stdio and drive it with a real MCP client.

    `mcp_ports`: `FIRST-LAST`, the default pool's MCP server ports for the
    demo (e.g. when something else listens on 9000); None keeps the pool's.
    """
    try:
        span = None if mcp_ports is None else parse_port_range(mcp_ports)
    except ValueError as error:
        return fail(f"--mcp-ports: {error}", 2)
    if importlib.util.find_spec("mcp_server_time") is None:
        return fail(
            "the demo runs the reference MCP server mcp-server-time, which is not "
            "installed here: pip install mcp-server-time",
            2,
        )
    try:
        anyio.run(_drive_demo, settings, console, span)
    except (DemoError, BaseExceptionGroup) as error:
        # Raised inside the client's task group, a DemoError arrives wrapped.
        found = _demo_error(error)
        if found is None:
            raise
        return fail(str(found), 1)
    return 0


def _demo_error(error: BaseException) -> DemoError | None:
    """The DemoError that `error` is or holds (as task groups nest); None if
    it holds something else (an unexpected error, shown as such)."""
    if isinstance(error, DemoError):
        return error
    if isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        return _demo_error(error.exceptions[0])
    return None
