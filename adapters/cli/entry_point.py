"""The `allocation-ledger` command line: its parser and `main`, which runs
serve, demo, status, init-db and the audit commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from rich.console import Console

from allocation_ledger.adapters.cli import audit_commands
from allocation_ledger.adapters.cli.console import PROG, capacity_table, fail
from allocation_ledger.adapters.cli.demo import run_demo
from allocation_ledger.adapters.cli.serve import run_serve
from allocation_ledger.adapters.config.catalog import CatalogError
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    DatabaseError,
    init_database,
    open_service,
)
from allocation_ledger.domain.errors import LedgerError
from allocation_ledger.projections.views import CapacityView


def _capacity(service: AllocationService) -> CapacityView:
    view = service.read_models.capacity()
    assert view is not None
    return view


def run_status(service: AllocationService, console: Console, *, as_json: bool) -> None:
    """Every pool's capacity, as tables or (`as_json`) as JSON."""
    views = service.read_models.capacities() or [_capacity(service)]
    if as_json:
        from allocation_ledger.projections.codec import capacity_to_dict

        print(json.dumps([capacity_to_dict(v) for v in views], indent=2))
        return
    for view in views:
        console.print(capacity_table(view))


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
        return run_demo(settings, console)
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
