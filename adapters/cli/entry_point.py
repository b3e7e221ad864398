"""The `allocation-ledger` command line: its parser and `main`, which runs
serve, demo, status, init-db and the audit commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from allocation_ledger.adapters.cli import audit_commands
from allocation_ledger.adapters.cli.console import PROG, capacity_table, fail
from allocation_ledger.adapters.cli.demo import run_demo
from allocation_ledger.adapters.cli.serve import add_metrics_arguments, run_serve
from allocation_ledger.adapters.config.catalog import CatalogError
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    DatabaseError,
    data_directory,
    init_database,
    open_service,
)
from allocation_ledger.domain.errors import LedgerError
from allocation_ledger.projections.views import CapacityView


def _capacity(service: AllocationService) -> CapacityView:
    view = service.read_models.capacity()
    assert view is not None
    return view


def worker_enforcement(service: AllocationService, pool: str) -> dict[str, str] | str:
    """How the pool's workers are held to their size on this machine: the
    mechanisms (probed as the worker supervisor probes them) when the catalog
    gives the pool a worker_command, else "reserved slots only"."""
    settings = service.settings
    entry = settings.catalog.pools.get(pool)
    if entry is None or not entry.worker_command:
        return "reserved slots only"
    if settings.catalog.effective_provisioner != "process":
        return "reserved slots only"
    from allocation_ledger.adapters.provisioning.limits import Limiter, group_name

    limiter = Limiter.detect(group_name(data_directory(settings)))
    try:
        return limiter.enforcement.as_dict()
    finally:
        limiter.close()


def server_processes(
    service: AllocationService, view: CapacityView
) -> list[dict[str, Any]]:
    """The pool's MCP servers with what happened to their processes (the
    ServerProcess records): name, port, status, references, pid, restarts."""
    shown: list[dict[str, Any]] = []
    for name in sorted(view.servers):
        server = view.servers[name]
        record = service.ledger.server_process(view.pool, name)
        status = "running" if server.references > 0 else "idle"
        if record is not None and record.status in ("starting", "failed"):
            status = record.status
        shown.append(
            {
                "name": name,
                "port": server.port,
                "status": status,
                "references": server.references,
                "pid": None if record is None else record.pid,
                "restarts": 0 if record is None else record.restarts,
            }
        )
    return shown


def run_status(service: AllocationService, console: Console, *, as_json: bool) -> None:
    """Every pool's capacity, its MCP servers with their process status and
    its worker enforcement, as tables or (`as_json`) as JSON."""
    views = service.read_models.capacities() or [_capacity(service)]
    if as_json:
        from allocation_ledger.projections.codec import capacity_to_dict

        shown = [
            capacity_to_dict(v)
            | {
                "mcp_server_processes": server_processes(service, v),
                "worker_enforcement": worker_enforcement(service, v.pool),
            }
            for v in views
        ]
        print(json.dumps(shown, indent=2, default=str))
        return
    for view in views:
        console.print(capacity_table(view))
        enforcement = worker_enforcement(service, view.pool)
        if isinstance(enforcement, dict):
            said = ", ".join(f"{k}: {v}" for k, v in enforcement.items())
        else:
            said = enforcement
        console.print(f"workers of pool {view.pool!r}: {said}")
        for server in server_processes(service, view):
            console.print(
                f"  MCP server {server['name']} on port {server['port']}: "
                f"{server['status']}, {server['references']} allocation(s), "
                f"pid {server['pid'] or '-'}, restarts {server['restarts']}"
            )


def build_parser() -> argparse.ArgumentParser:
    """The command line: serve, demo, status, init-db and the audit commands."""
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
        "--allowed-host",
        action="append",
        metavar="NAME",
        help=(
            "a Host header to accept besides the loopback names and --host, such "
            "as a reverse proxy's public name (repeatable; default: "
            f"{ENV_PREFIX}HTTP_ALLOWED_HOSTS)"
        ),
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        metavar="ORIGIN",
        help=(
            "an Origin header (browser page) to accept, such as "
            "https://ledger.example.com (repeatable; default: "
            f"{ENV_PREFIX}HTTP_ALLOWED_ORIGINS)"
        ),
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
    add_metrics_arguments(serve)
    demo = commands.add_parser(
        "demo",
        help="start the server over stdio and drive it with an MCP client",
    )
    demo.add_argument(
        "--mcp-ports",
        metavar="FIRST-LAST",
        help=(
            "the default pool's MCP server ports for the demo, e.g. 62000-62009 "
            "(default: the pool's own, 9000-9099 on a new ledger)"
        ),
    )
    status = commands.add_parser("status", help="show every pool's capacity")
    status.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser(
        "init-db",
        help="create the ledger's tables (PostgreSQL: once, before any server)",
    )
    audit_commands.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (`argv`, by default the process's); the exit code."""
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
    except CatalogError as error:
        return fail(str(error), 2)
    except ValidationError as error:
        return fail(f"invalid settings: {error}", 2)
    if args.command == "serve":
        return run_serve(args, settings)
    console = Console(stderr=False)
    if args.command == "demo":
        return run_demo(settings, console, args.mcp_ports)
    if args.command == "init-db":
        try:
            init_database(settings)
        except DatabaseError as error:
            return fail(str(error), 2)
        console.print(f"the {settings.store} ledger's tables are ready")
        return 0
    try:
        # These commands read and audit; they never provision.
        service = open_service(settings, provisioner=LocalProvisioner())
    except Exception as error:  # noqa: BLE001 - shown to the operator
        return fail(f"cannot open the ledger: {error}", 2)
    try:
        if args.command in audit_commands.COMMANDS:
            return audit_commands.run(args, service, console)
        run_status(service, console, as_json=args.json)
    except LedgerError as error:
        return fail(str(error), 1)
    finally:
        service.close()
    return 0
