"""Item 3: query latency against the size of the history.

Logs of 1k, 10k and 100k allocations (only a few still live) are generated
once and cached; each is copied, its read models caught up, and then the
three queries are timed through `projections.queries.ReadModels` (which
catch up with the log first, as every query does), interleaved so that noise
falls on all of them alike.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from allocation_ledger.domain.values import AllocationState
from allocation_ledger.projections.store import ListingQuery
from bench.common import (
    Result,
    Scale,
    log,
    now,
    open_bench_service,
    percentile,
    sqlite_settings,
    temporary_directory,
)
from bench.history import cached_log
from bench.rebuild import copy_log

QUERIES = ("get_capacity", "get_allocation", "list_allocations_active")


def measure(allocations: int, repeats: int) -> dict[str, Any]:
    info = cached_log("history", allocations=allocations, live_at_end=5)
    rng = random.Random(allocations)
    with temporary_directory() as directory:
        service = open_bench_service(sqlite_settings(copy_log(info, directory)))
        try:
            start = now()
            service.read_models.catch_up()
            caught_up = now() - start
            models = service.read_models
            ids = info.sample + info.live
            active = ListingQuery(state=AllocationState.ACTIVE)
            calls: dict[str, Callable[[], object]] = {
                "get_capacity": models.capacity,
                "get_allocation": lambda: models.allocation(rng.choice(ids)),
                "list_allocations_active": lambda: models.allocations(active),
            }
            listed = models.allocations(active)
            assert len(listed) == len(info.live), (len(listed), len(info.live))
            samples: dict[str, list[float]] = {name: [] for name in QUERIES}
            for _ in range(max(20, repeats // 10)):  # warm
                for name in QUERIES:
                    calls[name]()
            for _ in range(repeats):
                for name in QUERIES:
                    call = calls[name]
                    begin = now()
                    call()
                    samples[name].append(now() - begin)
        finally:
            service.close()
    row: dict[str, Any] = {
        "allocations": info.allocations,
        "events": info.events,
        "live": len(info.live),
        "catch_up_seconds": caught_up,
    }
    for name in QUERIES:
        row[f"{name}_p50_ms"] = percentile(samples[name], 0.50) * 1000
        row[f"{name}_p99_ms"] = percentile(samples[name], 0.99) * 1000
    log(
        f"item 3 {allocations:,}: "
        + ", ".join(
            f"{name} p50 {row[f'{name}_p50_ms']:.3f} ms p99 {row[f'{name}_p99_ms']:.3f}"
            for name in QUERIES
        )
    )
    return row


def run(scale: Scale) -> Result:
    sizes = scale.pick([1_000, 10_000, 100_000], [1_000, 10_000])
    repeats = scale.pick(1500, 200)
    rows = [measure(size, repeats) for size in sizes]
    first, last = rows[0], rows[-1]
    ratios = {
        f"{name}_{stat}": last[f"{name}_{stat}_ms"] / first[f"{name}_{stat}_ms"]
        for name in QUERIES
        for stat in ("p50", "p99")
    }
    worst_p50 = max(ratios[f"{name}_p50"] for name in QUERIES)
    return {
        "item": 3,
        "title": "Query latency against history size (SQLite read models)",
        "rows": rows,
        "ratio_label": f"{last['allocations']:,} / {first['allocations']:,}",
        "ratios": ratios,
        "worst_p50_ratio": worst_p50,
        "target": "largest / smallest history p50 latency <= 1.5 for every query",
        "met": worst_p50 <= 1.5,
    }
