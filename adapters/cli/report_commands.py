"""The commands that report on the history: export (the log as JSON lines),
usage (the accounting get_usage gives) and timeline (a chart, SVG or PNG).

Their arguments are checked before the ledger is opened, as the MCP tools
check theirs: --since before --until, and an --out that can be written (a
file in an existing directory; for a chart, .svg or .png).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from allocation_ledger.adapters.charts.timeline import collect
from allocation_ledger.adapters.charts.timeline_chart import (
    CHART_FORMATS,
    ChartFormat,
    render_chart,
)
from allocation_ledger.adapters.cli.console import fail
from allocation_ledger.adapters.cli.output import (
    ledger_line,
    print_json,
    print_ledger_line,
    progress_bar,
)
from allocation_ledger.adapters.mcp.schemas.units import MAX_LOG_POSITION
from allocation_ledger.adapters.mcp.schemas.usage import UsageResult, UsageRowResult
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.errors import InvalidRequestError, PoolNotFoundError
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.values import validate_job_id
from allocation_ledger.projections.usage import UsageQuery


def job_id(text: str) -> str:
    """A job id as request_resources takes it: one no allocation can have
    would only ever find nothing."""
    try:
        validate_job_id(text)
    except InvalidRequestError as error:
        msg = f"{error}: no allocation has such a job id"
        raise argparse.ArgumentTypeError(msg) from None
    return text


def position_at_least_zero(text: str) -> int:
    """A log position, zero (the start) or more."""
    try:
        value = int(text)
    except ValueError:
        msg = f"{text!r} is not a log position (a whole number, 0 for the start)"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 0:
        msg = f"must be 0 (the start) or a later position, got {value}"
        raise argparse.ArgumentTypeError(msg)
    if value > MAX_LOG_POSITION:
        msg = (
            f"must be at most {MAX_LOG_POSITION} (the last a log can hold), got {text}"
        )
        raise argparse.ArgumentTypeError(msg)
    return value


def add_commands(
    command: Callable[..., argparse.ArgumentParser],
    moment: Callable[[str], Any],
) -> None:
    """Register export, usage and timeline with `command` (which adds a
    subcommand with the common options); `moment` parses a time."""
    export = command("export", help="the event log as JSON lines")
    export.add_argument(
        "--since", type=position_at_least_zero, default=0, help="after this position"
    )
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")

    usage = command("usage", help="accounting per job and pool")
    usage.add_argument("--job", type=job_id, help="only this job")
    usage.add_argument("--pool", help="only this pool")
    usage.add_argument("--since", type=moment, help="from (ISO 8601)")
    usage.add_argument("--until", type=moment, help="until (ISO 8601; default now)")
    usage.add_argument("--json", action="store_true", help="print JSON")

    timeline = command(
        "timeline", help="chart of reserved vs. total capacity over time (SVG or PNG)"
    )
    timeline.add_argument("--pool", default=DEFAULT_POOL)
    timeline.add_argument("--since", type=moment)
    timeline.add_argument("--until", type=moment)
    timeline.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the chart to write: a .svg or .png file",
    )


def check_arguments(
    args: argparse.Namespace, ledger_file: Path | None = None
) -> str | None:
    """What is wrong with the arguments of export, usage or timeline; None
    when nothing is (or for another command). `ledger_file` is the SQLite
    file the command reads (None for another store): --out may not be it,
    nor one of SQLite's files beside it, or writing would destroy the
    ledger before it is read."""
    since, until = getattr(args, "since", None), getattr(args, "until", None)
    if args.command in ("usage", "timeline") and since and until and since >= until:
        return f"{args.command}: --since must be before --until"
    out: Path | None = getattr(args, "out", None)
    if args.command not in ("export", "timeline") or out is None:
        return None
    if out.is_dir():
        return f"--out {out} is a directory: name a file to write"
    directory = out.absolute().parent
    if not directory.is_dir():
        return (
            f"--out {out}: its directory {directory} does not exist (create it first)"
        )
    if ledger_file is not None and _is_ledger_file(out, ledger_file):
        return (
            f"--out {out} would overwrite the ledger {ledger_file} (a file "
            "of its own): name another file to write"
        )
    if args.command == "timeline" and _chart_format(out) is None:
        suffixes = " or ".join(f".{f}" for f in CHART_FORMATS)
        given = out.suffix or "a name without a suffix"
        return f"--out {out}: a chart is written as {suffixes}, not {given}"
    return None


SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
"""What SQLite keeps beside a database file, by suffix of its name."""


def _is_ledger_file(out: Path, ledger_file: Path) -> bool:
    """Whether `out` is the ledger's file, or one SQLite keeps beside it
    (by name, or the same file under another name: a link)."""
    for companion in SQLITE_COMPANIONS:
        kept = ledger_file.with_name(ledger_file.name + companion)
        if out.resolve() == kept.resolve():
            return True
        try:
            if out.exists() and kept.exists() and out.samefile(kept):
                return True
        except OSError:
            continue
    return False


def _chart_format(out: Path) -> ChartFormat | None:
    for fmt in CHART_FORMATS:
        if out.suffix.lower() == f".{fmt}":
            return fmt
    return None


def export(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    """The log after --since as JSON lines, to --out or stdout; the count and
    the ledger on stderr."""
    written = 0
    try:
        out = args.out.open("w", encoding="utf-8") if args.out else sys.stdout
    except OSError as error:
        return fail(f"cannot write {args.out}: {error.strerror or error}", 1)
    try:
        # A progress bar only when the records go to a file: on the terminal
        # it would interleave with them.
        with progress_bar("exporting", args.out is not None) as progress:
            for record in audit.export_events(service, args.since, progress):
                out.write(json.dumps(record, separators=(",", ":")) + "\n")
                written += 1
    finally:
        if args.out:
            out.close()
    where = f" to {args.out}" if args.out else ""
    print(
        f"exported {written} events{where} from {ledger_line(service)}",
        file=sys.stderr,
    )
    return 0


def usage(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    """What get_usage answers, as a table or (--json) in its shape."""
    query = UsageQuery(
        job_id=args.job, pool=args.pool, since=args.since, until=args.until
    )
    now = service.ledger.clock.now()
    late = _since_after(
        "usage",
        args.since,
        now,
        "nothing is billed after now, so a period that starts later holds nothing yet",
    )
    if late is not None:
        return fail(late, 2)
    rows = audit.usage(service, query, now)
    if args.json:
        result = UsageResult(
            usage=[UsageRowResult.model_validate(r.as_dict()) for r in rows],
            count=len(rows),
            since=query.since,
            until=query.billed_until(now),
        )
        print_json(service, result.model_dump(mode="json"))
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
    print_ledger_line(console, service)
    return 0


def _since_after(
    command: str, since: datetime | None, now: datetime, why: str
) -> str | None:
    """The usage error of a --since at or after `now` (None when it is
    before): `why` says what the command shows that makes it empty."""
    if since is None or since < now:
        return None
    return f"{command}: --since must be before now ({now.isoformat()}): {why}"


def timeline(
    args: argparse.Namespace, service: AllocationService, console: Console
) -> int:
    """Chart the pool's reserved and total capacity into --out (.svg, .png)."""
    fmt = _chart_format(args.out)
    assert fmt is not None  # check_arguments refused other suffixes
    audit.require_pool(service, args.pool)
    late = _since_after(
        "timeline",
        args.since,
        service.ledger.clock.now(),
        "the chart shows what happened, and nothing has after now",
    )
    if late is not None:
        return fail(late, 2)
    with progress_bar("replaying") as progress:
        found = collect(
            service.ledger.recorder,
            service.projector.decode,
            args.pool,
            since=args.since,
            until=args.until,
            progress=progress,
        )
    if not any(found.points.values()):
        # The pool was created after --until: a chart of it would be drawn
        # from nothing, as if it had been empty then.
        raise PoolNotFoundError(args.pool, args.until)
    chart = render_chart(found, fmt=fmt, until=args.until)
    try:
        args.out.write_bytes(chart)
    except OSError as error:
        return fail(f"cannot write {args.out}: {error.strerror or error}", 1)
    console.print(
        f"wrote {args.out} ({fmt.upper()}, {len(found.rejections)} rejections, "
        f"{len(found.expiries)} expiries marked) from {ledger_line(service)}",
        highlight=False,
        soft_wrap=True,
    )
    return 0
