"""How the commands print: JSON under the ledger it was read from, the
ledger in words, and a progress bar for long replays (on stderr)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from allocation_ledger.adapters.storage.ledger_file import ledger_description
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.projections.catchup import Progress as ProgressCallback


def print_json(service: AllocationService, data: dict[str, Any]) -> None:
    """`data` as JSON on stdout, with `ledger`: {store, location, read_only}."""
    ledger = ledger_description(service.settings, read_only=service.read_only)
    print(json.dumps({"ledger": ledger, **data}, indent=2))


def ledger_line(service: AllocationService) -> str:
    """The ledger a command used, in words: `sqlite /path/ledger.db, read-only`."""
    described = ledger_description(service.settings, read_only=service.read_only)
    mode = ", read-only" if service.read_only else ""
    return f"{described['store']} {described['location']}{mode}"


def print_ledger_line(console: Console, service: AllocationService) -> None:
    """The last line of a command's tables: `ledger: sqlite /path, read-only`,
    whole on one line (a table's caption would be wrapped to its width)."""
    console.print(f"ledger: {ledger_line(service)}", highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(label: str, enabled: bool = True) -> Iterator[ProgressCallback]:
    """A progress bar on stderr, fed with (position, last position); nothing
    at all (not even an empty line) when stderr is not a terminal."""
    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda done, total: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, done))

        yield advance
