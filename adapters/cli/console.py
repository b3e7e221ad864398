"""What the command line shows the operator: its failures on stderr, and
tables of what the tools answer (client units: cores, MB)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from allocation_ledger.adapters.mcp.schemas.capacity import capacity_result
from allocation_ledger.projections.views import CapacityView

PROG = "allocation-ledger"


def fail(message: str, code: int) -> int:
    """Say `message` on stderr, in the program's name; `code` is the exit code."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


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
    """A pool's capacity, from its read model."""
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
    """An allocation's events, from get_allocation_history's result."""
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
