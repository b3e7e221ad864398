"""The `allocation-ledger` command line: serve, demo, status."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from allocation_ledger.adapters import audit_cli
from allocation_ledger.adapters.mcp_models import capacity_result
from allocation_ledger.adapters.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    DatabaseError,
    init_database,
    open_service,
)
from allocation_ledger.domain.errors import LedgerError
from allocation_ledger.projections.views import CapacityView

PROG = "allocation-ledger"


# -- tables --------------------------------------------------------------------


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def capacity_summary_table(capacity: Mapping[str, Any]) -> Table:
    """A pool's capacity, from get_capacity's result (client units)."""
    table = Table(title=f"Capacity of pool {capacity['pool']!r}")
    for column in ("", "total", "allocated", "available"):
        table.add_column(column, justify="right")
    for label, key in (
        ("cpu (cores)", "cpu"),
        ("memory (MB)", "memory"),
        ("workers", "workers"),
    ):
        table.add_row(
            label,
            _number(capacity[f"total_{key}"]),
            _number(capacity[f"allocated_{key}"]),
            _number(capacity[f"available_{key}"]),
        )
    servers = ", ".join(
        f"{s['name']}:{s['port']} ({s['status']})" for s in capacity["mcp_servers"]
    )
    table.caption = (
        f"active allocations: {capacity['active_allocations']}; "
        f"MCP servers: {servers or 'none'}"
    )
    return table


def capacity_table(view: CapacityView) -> Table:
    return capacity_summary_table(capacity_result(view).model_dump(mode="json"))


def allocations_table(items: Sequence[Mapping[str, Any]]) -> Table:
    """Allocations, from list_allocations' items."""
    table = Table(title="Allocations")
    for column in ("allocation", "job", "state", "priority", "workers", "expires"):
        table.add_column(column)
    for item in items:
        table.add_row(
            item["allocation_id"],
            item["job_id"],
            item["state"],
            item["priority"],
            str(item["workers"]),
            item["expires_at"] or "-",
        )
    return table


def history_table(history: Mapping[str, Any]) -> Table:
    table = Table(title=f"History of {history['allocation_id']}")
    for column in ("#", "event", "at", "actor", "state"):
        table.add_column(column)
    for event in history["events"]:
        table.add_row(
            str(event["version"]),
            event["event"],
            event["at"],
            event["actor"],
            event["state"],
        )
    return table


# -- serve ---------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the MCP server until stdin closes (stdio) or it is interrupted (HTTP)."""
    from allocation_ledger.adapters.http.auth import StaticTokenVerifier

    verifier: StaticTokenVerifier | None = None
    host = args.host or settings.http_host
    port = args.port if args.port is not None else settings.http_port
    path = args.path or settings.http_path
    if args.transport == "http":
        if not path.startswith("/"):
            return _fail(f"--path must start with '/', got {path!r}", 2)
        if not 0 < port < 65536:
            return _fail(f"--port must be 1-65535, got {port}", 2)
        if args.no_auth:
            if not _is_loopback(host):
                print(
                    f"{PROG}: WARNING: serving without authentication on {host}; "
                    "anyone who can reach it can allocate and release",
                    file=sys.stderr,
                )
        else:
            try:
                verifier = StaticTokenVerifier(settings.token_entries())
            except ValueError as error:
                return _fail(str(error), 2)
            if not len(verifier):
                return _fail(
                    "no bearer tokens are configured: set "
                    f"{ENV_PREFIX}TOKENS or {ENV_PREFIX}TOKENS_FILE, or pass "
                    "--no-auth to serve without authentication",
                    2,
                )
    try:
        service = open_service(settings)
    except Exception as error:  # noqa: BLE001 - shown to the operator
        return _fail(f"cannot open the ledger: {error}", 2)
    try:
        if args.transport == "stdio":
            from allocation_ledger.adapters.mcp_server import stdio_server

            anyio.run(stdio_server(service).run_stdio_async)
        else:
            from allocation_ledger.adapters.mcp_server import http_app, serve_http

            app = http_app(
                service,
                host=host,
                path=path,
                verifier=verifier,
                stateless=args.stateless or settings.http_stateless,
            )
            auth = (
                "without authentication" if verifier is None else "with bearer tokens"
            )
            print(
                f"{PROG}: serving MCP on http://{host}:{port}{path} {auth}",
                file=sys.stderr,
            )
            anyio.run(
                functools.partial(
                    serve_http, app, host=host, port=port, log_level=settings.log_level
                )
            )
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    return 0


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


# -- demo ----------------------------------------------------------------------


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

        first = await call(
            "request_resources",
            job_id="demo-research",
            mcp_servers=["filesystem", "github"],
            workers=2,
            request_id=f"demo-{run}-research",
            metadata={"demo_run": run},
        )
        _show_request(console, first)
        again = await call(
            "request_resources",
            job_id="demo-research",
            mcp_servers=["filesystem", "github"],
            workers=2,
            request_id=f"demo-{run}-research",
            metadata={"demo_run": run},
        )
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
        return _fail(str(error), 1)
    return 0


# -- status --------------------------------------------------------------------


def _capacity(service: AllocationService) -> CapacityView:
    view = service.read_models.capacity()
    assert view is not None
    return view


def run_status(service: AllocationService, console: Console, *, as_json: bool) -> None:
    views = service.read_models.capacities() or [_capacity(service)]
    if as_json:
        from allocation_ledger.projections.codec import capacity_to_dict

        print(json.dumps([capacity_to_dict(v) for v in views], indent=2))
        return
    for view in views:
        console.print(capacity_table(view))


# -- entry point ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An event-sourced allocator of workers and MCP servers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the MCP server (stdio by default)",
        description=(
            "Run the MCP server. Over stdio (the default) an MCP client starts "
            "it as a subprocess and every call is recorded as actor 'local'. "
            "Over HTTP it serves streamable HTTP and needs a bearer token from "
            f"{ENV_PREFIX}TOKENS or {ENV_PREFIX}TOKENS_FILE unless --no-auth."
        ),
    )
    serve.add_argument(
        "--transport", choices=("stdio", "http"), default="stdio", help="default: stdio"
    )
    serve.add_argument(
        "--host",
        help=f"HTTP address (default: 127.0.0.1, or {ENV_PREFIX}HTTP_HOST)",
    )
    serve.add_argument(
        "--port", type=int, help=f"HTTP port (default: 8765, or {ENV_PREFIX}HTTP_PORT)"
    )
    serve.add_argument(
        "--path", help=f"MCP endpoint path (default: /mcp, or {ENV_PREFIX}HTTP_PATH)"
    )
    serve.add_argument(
        "--no-auth",
        action="store_true",
        help="serve HTTP without bearer tokens (calls are recorded as 'anonymous')",
    )
    serve.add_argument(
        "--stateless",
        action="store_true",
        help=(
            "keep no MCP session in this process, so a load balancer may send any "
            "request to any server (several servers on one PostgreSQL ledger)"
        ),
    )
    commands.add_parser(
        "demo",
        help="start the server over stdio and drive it with an MCP client",
    )
    status = commands.add_parser("status", help="show every pool's capacity")
    status.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser(
        "init-db",
        help="create the ledger's tables (PostgreSQL: once, before any server)",
    )
    audit_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader stopped early (`| head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as error:
        return _fail(f"invalid settings: {error}", 2)
    if args.command == "serve":
        return run_serve(args, settings)
    console = Console(stderr=False)
    if args.command == "demo":
        return run_demo(settings, console)
    if args.command == "init-db":
        try:
            init_database(settings)
        except DatabaseError as error:
            return _fail(str(error), 2)
        console.print(f"the {settings.store} ledger's tables are ready")
        return 0
    try:
        service = open_service(settings)
    except Exception as error:  # noqa: BLE001 - shown to the operator
        return _fail(f"cannot open the ledger: {error}", 2)
    try:
        if args.command in audit_cli.COMMANDS:
            return audit_cli.run(args, service, console)
        run_status(service, console, as_json=args.json)
    except LedgerError as error:
        return _fail(str(error), 1)
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
