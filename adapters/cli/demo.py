"""`allocation-ledger demo`: the real server over stdio, driven by a real MCP
client through requests, a retry, a refusal, a renewal and releases."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import anyio
from rich.console import Console

from allocation_ledger.adapters.cli.console import (
    PROG,
    allocations_table,
    capacity_summary_table,
    fail,
    history_table,
)
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings


def _server_command() -> tuple[str, list[str]]:
    return sys.executable, ["-m", "allocation_ledger.adapters.cli", "serve"]


def _child_env() -> dict[str, str]:
    """The settings the served ledger should see: this process's own."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    env.setdefault(ENV_PREFIX + "LOG_LEVEL", "WARNING")
    for name in ("PYTHONPATH", "HOME", "TMPDIR"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


class DemoError(Exception):
    """A tool call in the demo came back as an error."""


async def _drive_demo(settings: Settings, console: Console) -> None:
    from mcp import Client, StdioServerParameters
    from mcp_types import TextContent

    command, arguments = _server_command()
    params = StdioServerParameters(command=command, args=arguments, env=_child_env())
    run = uuid.uuid4().hex[:8]

    async with Client(params) as client:

        async def call(tool: str, **arguments: Any) -> dict[str, Any]:
            shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
            console.print(f"[bold cyan]→ {tool}[/]({shown})")
            result = await client.call_tool(tool, arguments)
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

        capacity = await call("get_capacity")
        console.print(capacity_summary_table(capacity))

        research: dict[str, Any] = {
            "job_id": "demo-research",
            "mcp_servers": ["filesystem", "github"],
            "workers": 2,
            "request_id": f"demo-{run}-research",
            "metadata": {"demo_run": run},
        }
        first = await call("request_resources", **research)
        _show_request(console, first)
        again = await call("request_resources", **research)  # the same request again
        console.print(
            f"  retry with the same request_id: {again['allocation_id']} "
            f"(replayed={again['replayed']}); nothing new was reserved"
        )
        second = await call(
            "request_resources",
            job_id="demo-review",
            mcp_servers=["github"],
            workers=1,
            metadata={"demo_run": run},
        )
        _show_request(console, second)

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
        console.print(
            "Idle MCP servers keep their ports until the idle timeout "
            f"({capacity['idle_timeout_seconds']} s), then stop."
        )


def _show_request(console: Console, result: Mapping[str, Any]) -> None:
    allocation = result["allocation_id"]
    if result["status"] != "active":
        console.print(
            f"  {allocation}: [bold red]{result['status']}[/] - "
            f"{result.get('error')} (reason: {result.get('reason')})"
        )
        return
    servers = ", ".join(f"{s['name']} {s['endpoint']}" for s in result["mcp_servers"])
    workers = ", ".join(w["endpoint"] for w in result["workers_allocated"])
    console.print(
        f"  {allocation}: [bold green]active[/] until {result['expires_at']}; "
        f"MCP servers: {servers or 'none'}; workers: {workers or 'none'}"
    )


def run_demo(settings: Settings, console: Console) -> int:
    """Start the real server over stdio and drive it with a real MCP client."""
    try:
        anyio.run(_drive_demo, settings, console)
    except DemoError as error:
        return fail(str(error), 1)
    return 0
