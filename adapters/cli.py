"""The `allocation-ledger` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from domain.errors import LedgerError
from domain.values import MILLICORES_PER_CORE, AllocationRequest
from projections.store import ListingQuery
from projections.views import AllocationView, CapacityView

from adapters.service import AllocationService, open_service
from adapters.settings import Settings


def _cores(millicores: int) -> float:
    return millicores / MILLICORES_PER_CORE


def capacity_table(view: CapacityView) -> Table:
    table = Table(title=f"Capacity of pool {view.pool!r}")
    for column in ("", "total", "reserved", "available"):
        table.add_column(column, justify="right")
    available = view.available
    table.add_row(
        "cpu (cores)",
        f"{_cores(view.total.cpu_millicores):g}",
        f"{_cores(view.reserved.cpu_millicores):g}",
        f"{_cores(available.cpu_millicores):g}",
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
    servers = ", ".join(
        f"{s.name}:{s.port} ({s.status})" for s in view.servers.values()
    )
    table.caption = (
        f"live allocations: {view.live_allocations}; MCP servers: {servers or 'none'}"
    )
    return table


def allocations_table(views: Sequence[AllocationView]) -> Table:
    table = Table(title="Allocations")
    for column in ("allocation", "job", "state", "priority", "workers", "servers"):
        table.add_column(column)
    for view in views:
        table.add_row(
            view.allocation_id,
            view.job_id,
            view.state,
            view.priority,
            str(view.workers_requested),
            ", ".join(view.servers_requested) or "-",
        )
    return table


def run_demo(service: AllocationService, console: Console) -> None:
    """Request, list, release and show capacity: the ledger at work."""
    ledger, read = service.ledger, service.read_models
    console.print(f"Ledger: {service.settings.store} store", end="")
    if service.settings.store == "sqlite":
        console.print(f" at {service.settings.database.resolve()}", end="")
    console.print()
    console.print(capacity_table(_capacity(service)))
    first = ledger.request(
        AllocationRequest("demo-research", ("filesystem", "github"), workers=2)
    )
    second = ledger.request(AllocationRequest("demo-review", ("github",), workers=1))
    for result in (first, second):
        allocation = result.allocation
        endpoints = ", ".join(
            [*allocation.endpoints.servers.values(), *allocation.endpoints.workers.values()]
        )
        console.print(
            f"requested {allocation.allocation_id} for {allocation.request.job_id}: "
            f"{allocation.state} -> {endpoints}"
        )
    too_big = ledger.request(AllocationRequest("demo-too-big", (), workers=50))
    rejection = too_big.allocation.rejection
    console.print(
        f"requested {too_big.allocation.allocation_id} for demo-too-big: "
        f"{too_big.allocation.state} ({rejection})"
    )
    console.print(allocations_table(read.allocations(ListingQuery(after=_before(first)))))
    console.print(capacity_table(_capacity(service)))
    for result in (first, second):
        outcome = ledger.release(result.allocation.allocation_id)
        console.print(
            f"released {outcome.result.allocation_id}: {outcome.result.status}"
        )
    console.print(capacity_table(_capacity(service)))


def _before(result: object) -> int:
    position = getattr(result, "position", None) or 1
    return max(int(position) - 10, 0)


def _capacity(service: AllocationService) -> CapacityView:
    view = service.read_models.capacity()
    assert view is not None
    return view


def run_status(service: AllocationService, console: Console, *, as_json: bool) -> None:
    views = service.read_models.capacities() or [_capacity(service)]
    if as_json:
        from projections.codec import capacity_to_dict

        print(json.dumps([capacity_to_dict(v) for v in views], indent=2))
        return
    for view in views:
        console.print(capacity_table(view))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allocation-ledger",
        description="An event-sourced allocator of workers and MCP servers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="request, list and release on the ledger")
    status = commands.add_parser("status", help="show every pool's capacity")
    status.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        service = open_service(Settings())
    except Exception as error:  # noqa: BLE001 - shown to the operator
        print(f"allocation-ledger: cannot open the ledger: {error}", file=sys.stderr)
        return 2
    try:
        if args.command == "demo":
            run_demo(service, console)
        elif args.command == "status":
            run_status(service, console, as_json=args.json)
    except LedgerError as error:
        print(f"allocation-ledger: {error}", file=sys.stderr)
        return 1
    finally:
        service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
