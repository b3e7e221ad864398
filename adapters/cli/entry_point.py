"""The `allocation-ledger` command line: its parser and `main`, which runs
serve, demo, status, init-db and the audit commands.

Exit codes: 0 done; 2 the command line or the settings are wrong; 1
anything else that stopped the command (no ledger, a database that cannot
be used, a port in use, an unknown allocation or pool). Every failure is
one line on stderr; --debug shows the traceback of an unexpected one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rich.console import Console

from allocation_ledger.adapters.cli import audit_commands
from allocation_ledger.adapters.cli.configuration import SettingsProblem, load_settings
from allocation_ledger.adapters.cli.console import PROG, fail
from allocation_ledger.adapters.cli.demo import run_demo
from allocation_ledger.adapters.cli.serve import add_metrics_arguments, run_serve
from allocation_ledger.adapters.cli.status_command import run_status
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.adapters.storage.ledger_file import (
    check_sqlite_file,
    ledger_location,
)
from allocation_ledger.adapters.storage.reader import open_reader
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    DatabaseError,
    init_database,
    open_service,
)
from allocation_ledger.domain.errors import LedgerError

READ_ONLY_COMMANDS = frozenset({"status", *audit_commands.READ_ONLY})
"""Commands that only read: they open an existing ledger and write nothing."""


def _version() -> str:
    try:
        return version("allocation-ledger")
    except PackageNotFoundError:
        return "unknown"


def common_options(*, after_command: bool = True) -> argparse.ArgumentParser:
    """The options every command takes: --database, --config, --debug.

    They may come before the command or after it. Argparse lets a
    subcommand's defaults overwrite what was given before the command, so
    the copy taken `after_command` has no defaults (argparse.SUPPRESS): an
    option given before the command then stands, one given after wins.
    """
    unset: object = argparse.SUPPRESS if after_command else None
    common = argparse.ArgumentParser(add_help=False)
    where = common.add_argument_group("where the ledger is")
    where.add_argument(
        "--database",
        type=Path,
        metavar="PATH",
        default=unset,
        help=f"the ledger's SQLite file (sets the store to sqlite; default: "
        f"{ENV_PREFIX}DATABASE, or allocation-ledger.db here)",
    )
    where.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        default=unset,
        help=f"the TOML config file (default: {ENV_PREFIX}CONFIG)",
    )
    where.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS if after_command else False,
        help="on an unexpected error, show its traceback",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The command line: serve, demo, status, init-db and the audit commands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="An event-sourced allocator of workers and MCP servers.",
        parents=[common_options(after_command=False)],
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    common = common_options()
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="run the MCP server (stdio by default)",
        description=(
            "Run the MCP server. Over stdio (the default) an MCP client starts "
            "it as a subprocess and every call is recorded as actor 'local'. "
            "Over HTTP it serves streamable HTTP and needs a bearer token from "
            f"{ENV_PREFIX}TOKENS or {ENV_PREFIX}TOKENS_FILE unless --no-auth. "
            "The ledger's file may be created; its directory must exist."
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
    serve.add_argument(
        "--log-format",
        choices=("plain", "json"),
        help=(
            "the log on stderr: plain lines (time, level, logger, message) or "
            f"one JSON object per line (default: plain, or {ENV_PREFIX}LOG_FORMAT)"
        ),
    )
    add_metrics_arguments(serve)
    demo = commands.add_parser(
        "demo",
        parents=[common],
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
    status = commands.add_parser(
        "status", parents=[common], help="show every pool's capacity"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    commands.add_parser(
        "init-db",
        parents=[common],
        help="create the ledger's tables (PostgreSQL: once, before any server)",
    )
    audit_commands.add_commands(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (`argv`, by default the process's); the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except BrokenPipeError:
        # The reader stopped early (`| head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as error:
        if args.debug:
            raise
        return fail(
            f"unexpected error: {type(error).__name__}: {error} "
            "(run it again with --debug for the traceback)",
            1,
        )


OFF_TERMINAL_WIDTH = 10_000
"""Columns a table may take when standard output is not a terminal: a
file or a pipe gets every value whole, not cut to 80 columns."""


def output_console() -> Console:
    """The console commands print to: the terminal's width on a terminal;
    off one, `COLUMNS` if set, else wide enough for any table."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console(stderr=False)
    return Console(stderr=False, width=OFF_TERMINAL_WIDTH)


def _main(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except SettingsProblem as error:
        return fail(str(error), 2)
    if args.command == "serve":
        return run_serve(args, settings)
    console = output_console()
    if args.command == "demo":
        if settings.store == "sqlite":
            try:
                check_sqlite_file(settings.database, must_exist=False)
            except DatabaseError as error:
                return fail(str(error), 1)
        return run_demo(settings, console, args.mcp_ports)
    if args.command == "init-db":
        try:
            init_database(settings)
        except DatabaseError as error:
            return fail(str(error), 1)
        console.print(
            f"the ledger's tables are ready: {settings.store} "
            f"{ledger_location(settings)}",
            highlight=False,
            soft_wrap=True,
        )
        return 0
    ledger_file = settings.database if settings.store == "sqlite" else None
    problem = audit_commands.check_arguments(args, ledger_file)
    if problem is not None:
        return fail(problem, 2)
    try:
        service = _open(args.command, settings)
    except DatabaseError as error:
        return fail(str(error), 1)
    try:
        if args.command in audit_commands.COMMANDS:
            return audit_commands.run(args, service, console)
        run_status(service, console, as_json=args.json)
    except LedgerError as error:
        return fail(str(error), 1)
    finally:
        service.close()
    return 0


def _open(command: str, settings: Settings) -> AllocationService:
    """The ledger for `command`: read-only for the commands that only read;
    `rebuild` writes read models, but of an existing ledger only.

    Raises DatabaseError (LedgerMissingError when there is none) naming the
    place, whatever went wrong opening it.
    """
    try:
        if command in READ_ONLY_COMMANDS:
            return open_reader(settings)
        open_reader(settings).close()  # it must exist
        # `rebuild` never provisions: addresses only.
        return open_service(settings, provisioner=LocalProvisioner())
    except DatabaseError:
        raise
    except Exception as error:
        msg = f"cannot open the ledger {ledger_location(settings)}: {error}"
        raise DatabaseError(msg) from error
