"""The operator's commands on the history: history, capacity --at, verify,
rebuild, export, usage, timeline. Each prints a table for people or, with
--json, JSON for machines; long replays show a progress bar on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from allocation_ledger.adapters.charts.timeline import collect, render_svg
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.values import MILLICORES_PER_CORE
from allocation_ledger.projections.catchup import Progress as ProgressCallback
from allocation_ledger.projections.codec import allocation_to_dict, capacity_to_dict
from allocation_ledger.projections.usage import UsageQuery
from allocation_ledger.projections.verify import DEFAULT_TIME_TOLERANCE

COMMANDS = ("history", "capacity", "verify", "rebuild", "export", "usage", "timeline")


def moment(text: str) -> datetime:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        msg = f"{text!r} is not an ISO 8601 time (e.g. 2026-11-26T20:00:00Z)"
        raise argparse.ArgumentTypeError(msg) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def add_commands(commands: Any) -> None:
    """Register the audit commands on the command line's subparsers."""
    history = commands.add_parser(
        "history",
        help="every event of an allocation, or of an MCP server's processes",
    )
    history.add_argument("allocation_id", nargs="?")
    history.add_argument(
        "--server",
        metavar="NAME",
        help="the MCP server whose processes' history to show (instead of an id)",
    )
    history.add_argument(
        "--pool", default=DEFAULT_POOL, help="the pool of --server (default: default)"
    )
    _json(history)

    capacity = commands.add_parser(
        "capacity", help="a pool's capacity as it was at a moment (replayed)"
    )
    capacity.add_argument("--at", type=moment, required=True, help="ISO 8601 time")
    capacity.add_argument("--pool", default=DEFAULT_POOL)
    _json(capacity)

    verify = commands.add_parser(
        "verify", help="replay the log checking every invariant; exit 1 if broken"
    )
    verify.add_argument(
        "--time-tolerance",
        type=float,
        default=DEFAULT_TIME_TOLERANCE.total_seconds(),
        metavar="SECONDS",
        help="how much earlier than the latest event before it an event of "
        "another aggregate may be (servers sharing PostgreSQL; default "
        "%(default)g)",
    )
    _json(verify)

    rebuild = commands.add_parser("rebuild", help="drop and replay the read models")
    _json(rebuild)

    export = commands.add_parser("export", help="the event log as JSON lines")
    export.add_argument("--since", type=int, default=0, help="after this position")
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")

    usage = commands.add_parser("usage", help="accounting per job and pool")
    usage.add_argument("--job", help="only this job")
    usage.add_argument("--pool", help="only this pool")
    usage.add_argument("--since", type=moment, help="from (ISO 8601)")
    usage.add_argument("--until", type=moment, help="until (ISO 8601; default now)")
    _json(usage)

    timeline = commands.add_parser(
        "timeline", help="SVG chart of reserved vs. total capacity over time"
    )
    timeline.add_argument("--pool", default=DEFAULT_POOL)
    timeline.add_argument("--since", type=moment)
    timeline.add_argument("--until", type=moment)
    timeline.add_argument("--out", type=Path, required=True, help="the .svg to write")


def _json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A progress bar on stderr, fed with (position, last position)."""
    if not enabled:
        yield lambda done, total: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, done))

        yield advance


def run(args: argparse.Namespace, service: AllocationService, console: Console) -> int:
    """Run the audit command `args` names; the exit code."""
    handlers: dict[str, Callable[[argparse.Namespace, AllocationService, Console], int]]
    handlers = {
        "history": _history,
        "capacity": _capacity,
        "verify": _verify,
        "rebuild": _rebuild,
        "export": _export,
        "usage": _usage,
        "timeline": _timeline,
    }
    return handlers[args.command](args, service, console)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _history(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    if (args.server is None) == (args.allocation_id is None):
        console.print("history: give an allocation id or --server NAME (not both)")
        return 2
    if args.server is not None:
        entries = audit.server_process_history(service, args.pool, args.server)
        title = f"History of MCP server {args.server} of pool {args.pool}"
    else:
        entries = audit.allocation_history(service, args.allocation_id)
        title = f"History of {args.allocation_id}"
    if args.json:
        _print_json([e.as_dict() for e in entries])
        return 0
    table = Table(title=title)
    for column in ("#", "time", "event", "actor", "what changed"):
        table.add_column(column)
    for entry in entries:
        changes = ", ".join(
            f"{k}={json.dumps(v, separators=(',', ':'))}"
            for k, v in entry.changes.items()
        )
        table.add_row(
            str(entry.version), entry.at.isoformat(), entry.event, entry.actor, changes
        )
    console.print(table)
    return 0


def _cores(millicores: int) -> str:
    return f"{millicores / MILLICORES_PER_CORE:g}"


def _capacity(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    with progress_bar("replaying", not args.json) as progress:
        found = audit.capacity_at(service, args.at, args.pool, progress)
    if args.json:
        _print_json(
            {
                "at": found.at.isoformat(),
                "position": found.position,
                "capacity": capacity_to_dict(found.capacity),
                "reservations": [allocation_to_dict(v) for v in found.live],
            }
        )
        return 0
    view = found.capacity
    table = Table(
        title=f"Pool {view.pool!r} at {found.at.isoformat()} "
        f"(log position {found.position})"
    )
    for column in ("", "total", "reserved", "available"):
        table.add_column(column, justify="right")
    available = view.available
    table.add_row(
        "cpu (cores)",
        _cores(view.total.cpu_millicores),
        _cores(view.reserved.cpu_millicores),
        _cores(available.cpu_millicores),
    )
    table.add_row(
        "memory (MB)",
        str(view.total.memory_mib),
        str(view.reserved.memory_mib),
        str(available.memory_mib),
    )
    table.add_row(
        "workers",
        str(view.total.workers),
        str(view.reserved.workers),
        str(available.workers),
    )
    console.print(table)
    held = Table(title="Reservations")
    for column in ("allocation", "job", "state", "cpu", "memory", "workers", "servers"):
        held.add_column(column)
    for live in found.live:
        held.add_row(
            live.allocation_id,
            live.job_id,
            live.state,
            _cores(live.resources.cpu_millicores),
            str(live.resources.memory_mib),
            str(live.resources.workers),
            ", ".join(live.servers_requested) or "-",
        )
    console.print(held)
    servers = Table(title="MCP servers")
    for column in ("name", "port", "references", "status"):
        servers.add_column(column)
    for server in view.servers.values():
        servers.add_row(
            server.name, str(server.port), str(server.references), server.status
        )
    console.print(servers)
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
        _print_json(report.as_dict())
    elif report.clean:
        console.print(
            f"clean: {report.events} events, {report.allocations} allocations, "
            f"{report.pools} pools checked in {report.seconds:.2f} s"
        )
    else:
        if report.violation is not None:
            console.print(f"[red]{report.violation}[/red]")
        for mismatch in report.mismatches:
            console.print(f"[red]mismatch:[/red] {mismatch}")
    return 0 if report.clean else 1


def _rebuild(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    import time

    started = time.perf_counter()
    with progress_bar("rebuilding", not args.json) as progress:
        position = service.projector.rebuild(progress=progress)
    seconds = time.perf_counter() - started
    if args.json:
        _print_json({"position": position, "seconds": round(seconds, 3)})
    else:
        console.print(
            f"read models rebuilt up to position {position} in {seconds:.2f} s"
        )
    return 0


def _export(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
    try:
        for record in audit.export_events(service, args.since):
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
    finally:
        if args.out:
            out.close()
    return 0


def _usage(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    query = UsageQuery(
        job_id=args.job, pool=args.pool, since=args.since, until=args.until
    )
    rows = audit.usage(service, query)
    if args.json:
        _print_json([r.as_dict() for r in rows])
        return 0
    table = Table(title="Usage")
    for column in (
        "job",
        "pool",
        "CPU core-s",
        "memory MB-s",
        "worker-s",
        "MCP server-s",
        "allocations",
    ):
        table.add_column(column, justify="right" if "-s" in column else "left")
    for row in rows:
        table.add_row(
            row.job_id,
            row.pool,
            f"{row.cpu_core_seconds:,.1f}",
            f"{row.memory_mb_seconds:,.0f}",
            f"{row.worker_seconds:,.1f}",
            f"{row.mcp_server_seconds:,.1f}",
            ", ".join(f"{k} {v}" for k, v in sorted(row.allocations.items())),
        )
    console.print(table)
    return 0


def _timeline(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    with progress_bar("replaying") as progress:
        timeline = collect(
            service.ledger.recorder,
            service.projector.decode,
            args.pool,
            since=args.since,
            until=args.until,
            progress=progress,
        )
    args.out.write_text(render_svg(timeline, until=args.until), encoding="utf-8")
    console.print(
        f"wrote {args.out} ({len(timeline.rejections)} rejections, "
        f"{len(timeline.expiries)} expiries marked)"
    )
    return 0
