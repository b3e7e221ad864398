"""The operator's commands on the history: history, capacity --at, verify,
rebuild, export, usage, timeline. Each prints a table for people or, with
--json, JSON for machines (cores and MB, as the MCP tools answer, with the
ledger it read under "ledger"); long replays show a progress bar on stderr.

All but `rebuild` only read: they open an existing ledger read-only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from allocation_ledger.adapters.cli import report_commands
from allocation_ledger.adapters.cli.console import capacity_summary_table, fail
from allocation_ledger.adapters.cli.output import (
    ledger_line,
    print_json,
    print_ledger_line,
    progress_bar,
)
from allocation_ledger.adapters.mcp.schemas.capacity import capacity_result
from allocation_ledger.adapters.mcp.schemas.history import history_result
from allocation_ledger.adapters.mcp.schemas.units import amounts, representable
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid, is_allocation_id
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    InvalidRequestError,
    ServerHistoryNotFoundError,
)
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.values import validate_server_name
from allocation_ledger.projections.verify import DEFAULT_TIME_TOLERANCE
from allocation_ledger.projections.views import AllocationView

READ_ONLY = ("history", "capacity", "verify", "export", "usage", "timeline")
COMMANDS = (*READ_ONLY, "rebuild")


def moment(text: str) -> datetime:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"{text!r} is not an ISO 8601 time (e.g. 2026-11-26T20:00:00Z)"
        raise argparse.ArgumentTypeError(msg) from None
    try:
        return representable(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def server_name(text: str) -> str:
    """An MCP server's name, checked against the naming rule (a name that
    breaks it never ran, so its history would be empty, not an answer)."""
    try:
        validate_server_name(text)
    except InvalidRequestError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def allocation_id(text: str) -> str:
    """An allocation's public id, `alloc-` and 12 lowercase hex digits, as
    the MCP tools check it: a malformed one is a usage error, not an
    allocation that was not found."""
    if not is_allocation_id(text):
        msg = (
            f"{text!r} is not an allocation id: one is 'alloc-' followed by 12 "
            "lowercase hex digits (0-9, a-f), such as alloc-6cb23e46b979"
        )
        raise argparse.ArgumentTypeError(msg)
    return text


MAX_TIME_TOLERANCE_SECONDS = 366 * 24 * 3600
"""The most --time-tolerance takes: far past any clock's drift (more would
overflow the replay's time arithmetic, and tolerate nothing more)."""


def seconds_at_least_zero(text: str) -> float:
    """A number of seconds, zero or more (a negative tolerance would find a
    healthy ledger broken)."""
    try:
        value = float(text)
    except ValueError:
        msg = f"{text!r} is not a number of seconds (e.g. 5 or 0.5)"
        raise argparse.ArgumentTypeError(msg) from None
    if not value >= 0:  # also refuses nan
        msg = f"must be 0 or more seconds, got {text}"
        raise argparse.ArgumentTypeError(msg)
    if value > MAX_TIME_TOLERANCE_SECONDS:  # also refuses inf
        msg = (
            f"must be at most {MAX_TIME_TOLERANCE_SECONDS} seconds (a year), got {text}"
        )
        raise argparse.ArgumentTypeError(msg)
    return value


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register the audit commands on the command line's subparsers; each
    takes the `common` options too."""

    def command(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, parents=[common], **kwargs
        )
        return parser

    history = command(
        "history", help="every event of an allocation, or of an MCP server's processes"
    )
    history.add_argument(
        "allocation_id",
        nargs="?",
        type=allocation_id,
        metavar="ALLOCATION_ID",
        help="alloc- and 12 hex digits (or give --server NAME)",
    )
    history.add_argument(
        "--server",
        metavar="NAME",
        type=server_name,
        help="the MCP server whose processes' history to show (instead of an id)",
    )
    history.add_argument(
        "--pool", default=DEFAULT_POOL, help="the pool of --server (default: default)"
    )
    _json(history)

    capacity = command(
        "capacity", help="a pool's capacity as it was at a moment (replayed)"
    )
    capacity.add_argument("--at", type=moment, required=True, help="ISO 8601 time")
    capacity.add_argument("--pool", default=DEFAULT_POOL)
    _json(capacity)

    verify = command(
        "verify", help="replay the log checking every invariant; exit 1 if broken"
    )
    verify.add_argument(
        "--time-tolerance",
        type=seconds_at_least_zero,
        default=DEFAULT_TIME_TOLERANCE.total_seconds(),
        metavar="SECONDS",
        help="how much earlier than the latest event before it an event of "
        "another aggregate may be (servers sharing PostgreSQL; default "
        "%(default)g)",
    )
    _json(verify)

    rebuild = command("rebuild", help="drop and replay the read models")
    _json(rebuild)
    report_commands.add_commands(command, moment)


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def check_arguments(
    args: argparse.Namespace, ledger_file: Path | None = None
) -> str | None:
    """What is wrong with the command's arguments, checked before the
    ledger is opened (a usage error, exit 2); None when nothing is.
    `ledger_file` is the SQLite file it reads (None for another store)."""
    if args.command == "history" and (args.server is None) == (
        args.allocation_id is None
    ):
        return "history: give an allocation id or --server NAME (not both)"
    return report_commands.check_arguments(args, ledger_file)


Handler = Callable[[argparse.Namespace, AllocationService, Console], int]


def run(args: argparse.Namespace, service: AllocationService, console: Console) -> int:
    """Run the audit command `args` names; the exit code."""
    handlers: dict[str, Handler] = {
        "history": _history,
        "capacity": _capacity,
        "verify": _verify,
        "rebuild": _rebuild,
        "export": report_commands.export,
        "usage": report_commands.usage,
        "timeline": report_commands.timeline,
    }
    return handlers[args.command](args, service, console)


def _history(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    if args.server is not None:
        return _server_history(args, service, console)
    events: list[Allocation.Event] = []
    store = service.ledger.repository.event_store
    for event in store.get(allocation_uuid(args.allocation_id)):
        if isinstance(event, Allocation.Event):
            events.append(event)
    if not events:
        raise AllocationNotFoundError(args.allocation_id)
    # What get_allocation_history answers (cpu in cores, memory in MB).
    history = history_result(args.allocation_id, events).model_dump(mode="json")
    if args.json:
        print_json(service, history)
        return 0
    table = Table(
        title=f"History of {args.allocation_id} (job {history['job_id']}, "
        f"pool {history['pool']})"
    )
    for column in ("#", "time", "event", "actor", "state", "what changed"):
        table.add_column(column)
    for event in history["events"]:
        table.add_row(
            str(event["version"]),
            event["at"],
            event["event"],
            event["actor"],
            event["state"],
            _changes(event["changes"]),
        )
    console.print(table)
    print_ledger_line(console, service)
    return 0


def _server_history(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    audit.require_pool(service, args.pool)
    entries = audit.server_process_history(service, args.pool, args.server)
    if not entries:
        capacity = service.read_models.capacity(args.pool)
        known = tuple(sorted(capacity.servers)) if capacity is not None else ()
        raise ServerHistoryNotFoundError(args.pool, args.server, known)
    if args.json:
        print_json(
            service,
            {
                "pool": args.pool,
                "server": args.server,
                "events": [e.as_dict() for e in entries],
                "count": len(entries),
            },
        )
        return 0
    table = Table(title=f"History of MCP server {args.server} of pool {args.pool}")
    for column in ("#", "time", "event", "actor", "what changed"):
        table.add_column(column)
    for entry in entries:
        table.add_row(
            str(entry.version),
            entry.at.isoformat(),
            entry.event,
            entry.actor,
            _changes(entry.changes),
        )
    console.print(table)
    print_ledger_line(console, service)
    return 0


def _changes(changes: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in changes.items()
    )


def _reservation(view: AllocationView) -> dict[str, Any]:
    """A live allocation at a past moment, in client units."""
    return {
        "allocation_id": view.allocation_id,
        "job_id": view.job_id,
        "state": view.state,
        "priority": view.priority,
        "tenant": view.tenant,
        "resources": amounts(view.resources).model_dump(),
        "mcp_servers": list(view.servers_requested),
    }


def _capacity(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    now = service.ledger.clock.now()
    if args.at > now:
        return fail(
            f"capacity: --at must be a past moment (or now), got "
            f"{args.at.isoformat()}, after now ({now.isoformat()}): what the "
            "pool will hold is not known; `allocation-ledger status` shows it now",
            2,
        )
    with progress_bar("replaying", not args.json) as progress:
        found = audit.capacity_at(service, args.at, args.pool, progress)
    # What get_capacity answers with `at` (cpu in cores, memory in MB).
    capacity = capacity_result(found.capacity).model_dump(mode="json")
    reservations = [_reservation(v) for v in found.live]
    if args.json:
        print_json(
            service,
            capacity
            | {
                "at": found.at.isoformat(),
                "position": found.position,
                "reservations": reservations,
            },
        )
        return 0
    table = capacity_summary_table(capacity)
    table.title = (
        f"Pool {args.pool!r} at {found.at.isoformat()} (log position {found.position})"
    )
    table.caption = f"active allocations: {capacity['active_allocations']}"
    console.print(table)
    held = Table(title="Reservations")
    for column in ("allocation", "job", "state", "cpu", "memory", "workers", "servers"):
        held.add_column(column)
    for live in reservations:
        held.add_row(
            live["allocation_id"],
            live["job_id"],
            live["state"],
            f"{live['resources']['cpu']:g}",
            str(live["resources"]["memory"]),
            str(live["resources"]["workers"]),
            ", ".join(live["mcp_servers"]) or "-",
        )
    console.print(held)
    servers = Table(title="MCP servers")
    for column in ("name", "port", "references", "status"):
        servers.add_column(column)
    for server in capacity["mcp_servers"]:
        servers.add_row(
            server["name"],
            str(server["port"]),
            str(server["references"]),
            server["status"],
        )
    console.print(servers)
    print_ledger_line(console, service)
    return 0


def _verify(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    with progress_bar("verifying", not args.json) as progress:
        report = audit.verify(
            service,
            progress,
            time_tolerance=timedelta(seconds=args.time_tolerance),
        )
    if args.json:
        print_json(service, report.as_dict())
    elif report.clean:
        console.print(
            f"clean: {report.events} events, {report.allocations} allocations, "
            f"{report.pools} pools checked in {report.seconds:.2f} s "
            f"({ledger_line(service)})",
            highlight=False,
            soft_wrap=True,
        )
    else:
        if report.violation is not None:
            console.print(f"[red]{report.violation}[/red]")
        for mismatch in report.mismatches:
            console.print(f"[red]mismatch:[/red] {mismatch}")
        print_ledger_line(console, service)
    return 0 if report.clean else 1


def _rebuild(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    started = time.perf_counter()
    with progress_bar("rebuilding", not args.json) as progress:
        position = service.projector.rebuild(progress=progress)
    seconds = time.perf_counter() - started
    if args.json:
        print_json(service, {"position": position, "seconds": round(seconds, 3)})
    else:
        console.print(
            f"read models rebuilt up to position {position} in {seconds:.2f} s "
            f"({ledger_line(service)})",
            highlight=False,
            soft_wrap=True,
        )
    return 0
