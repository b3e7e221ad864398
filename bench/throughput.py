"""Item 1: request + release cycles per second through the Ledger, beside the floor.

The floor is a trivial `eventsourcing` application on the same store that
saves the same number of events in the same number of transactions as one
ledger cycle (counted from the ledger's own recorder, not assumed). Ledger and
floor run in alternating rounds in one process; the figure that matters is
the ratio of their times per cycle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.values import AllocationRequest
from bench.common import (
    Result,
    Scale,
    log,
    median,
    now,
    open_bench_service,
    postgres_available,
    postgres_schema,
    postgres_settings,
    sqlite_settings,
    temporary_directory,
)

REQUEST = AllocationRequest("bench-job", ("github",), 1)


class Thing(Aggregate):
    """The floor's aggregate: nothing but a counter."""

    def __init__(self) -> None:
        self.count = 0

    @event("Ticked")
    def tick(self) -> None:
        self.count += 1


class Floor(Application[UUID]):
    name = "BenchFloor"
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }


Shape = list[tuple[int, int]]  # per transaction: (events, aggregates)


@contextlib.contextmanager
def counting_transactions(service: AllocationService) -> Iterator[Shape]:
    """Record the (events, aggregates) of every transaction the ledger writes."""
    recorder = service.ledger.recorder
    original = recorder.insert_events
    shape: Shape = []

    def insert_events(stored_events: Sequence[Any], **kwargs: Any) -> Any:
        originators = {e.originator_id for e in stored_events}
        shape.append((len(stored_events), len(originators)))
        return original(stored_events, **kwargs)

    recorder.insert_events = insert_events  # type: ignore[method-assign]
    try:
        yield shape
    finally:
        recorder.insert_events = original  # type: ignore[method-assign]


def ledger_cycle(service: AllocationService) -> None:
    made = service.ledger.request(REQUEST)
    service.ledger.release(made.allocation.allocation_id)


def make_floor_cycle(floor: Floor, shape: Shape) -> Callable[[], None]:
    most = max(aggregates for _, aggregates in shape)
    things = [Thing() for _ in range(most)]
    floor.save(*things)

    def cycle() -> None:
        for events, aggregates in shape:
            chosen = things[:aggregates]
            for index in range(events):
                chosen[index % aggregates].tick()
            floor.save(*chosen)

    return cycle


def rate(cycle: Callable[[], None], count: int) -> float:
    start = now()
    for _ in range(count):
        cycle()
    return count / (now() - start)


def measure_store(
    label: str, settings: Settings, env: dict[str, str], scale: Scale
) -> Result:
    service = open_bench_service(settings)
    floor = Floor(env)
    try:
        for _ in range(20):  # warm: the MCP server is running, caches are full
            ledger_cycle(service)
        with counting_transactions(service) as shape:
            ledger_cycle(service)
        events = sum(e for e, _ in shape)
        floor_cycle = make_floor_cycle(floor, list(shape))
        for _ in range(20):
            floor_cycle()
        cycles = scale.pick(400, 60)
        rounds = scale.pick(5, 2)
        ledger_rates: list[float] = []
        floor_rates: list[float] = []
        for _ in range(rounds):
            ledger_rates.append(rate(lambda: ledger_cycle(service), cycles))
            floor_rates.append(rate(floor_cycle, cycles))
        ledger_rate = median(ledger_rates)
        floor_rate = median(floor_rates)
        ratios = [f / led for led, f in zip(ledger_rates, floor_rates, strict=True)]
        result: Result = {
            "store": label,
            "transactions_per_cycle": len(shape),
            "events_per_cycle": events,
            "shape": shape,
            "cycles_per_round": cycles,
            "rounds": rounds,
            "ledger_cycles_per_s": ledger_rate,
            "floor_cycles_per_s": floor_rate,
            "ledger_over_floor": median(ratios),
            "conflicts": service.ledger.conflicts,
        }
        log(
            f"item 1 {label}: ledger {ledger_rate:.0f}/s floor {floor_rate:.0f}/s "
            f"ratio {result['ledger_over_floor']:.2f} shape {shape}"
        )
        return result
    finally:
        service.close()
        floor.close()


def run(scale: Scale) -> Result:
    rows: list[Result] = []
    with temporary_directory() as directory:
        path = directory / "ledger.db"
        settings = sqlite_settings(path)
        rows.append(
            measure_store("sqlite", settings, settings.eventsourcing_env(), scale)
        )
    memory = Settings(store="memory")
    rows.append(measure_store("memory", memory, memory.eventsourcing_env(), scale))
    skipped = postgres_available()
    if skipped is None:
        with postgres_schema() as schema:
            settings = postgres_settings(schema)
            env = settings.eventsourcing_env()
            env["CREATE_TABLE"] = "y"
            rows.append(measure_store("postgres", settings, env, scale))
    else:
        rows.append({"store": "postgres", "skipped": skipped})
    worst = max(
        (r["ledger_over_floor"] for r in rows if "ledger_over_floor" in r), default=None
    )
    return {
        "item": 1,
        "title": "Command throughput: request + release cycles/s, ledger vs floor",
        "rows": rows,
        "target": "ledger/floor <= 1.5 on every store",
        "worst_ratio": worst,
        "met": worst is not None and worst <= 1.5,
    }
