"""Item 10: concurrent callers in one process, with and without group commit.

One service per store (SQLite file; PostgreSQL when reachable), a pool big
enough that nobody is refused or queued. 1, 4 and 16 threads each run
durable request + release cycles for the same window; group commit on and
off take turns, round after round (the machine's load drifts), and each
figure is the median over rounds. Reported: cycles/s, CPU time per cycle
(the process's, all threads), commands per recorded batch, and the ratio of
16 callers to one (target: at least 3 with group commit).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.observer import LedgerObserver
from allocation_ledger.domain.values import AllocationRequest, Resources
from bench.common import (
    Result,
    Scale,
    log,
    median,
    open_bench_service,
    postgres_available,
    postgres_schema,
    postgres_settings,
    sqlite_settings,
    temporary_directory,
)

CALLERS = (1, 4, 16)
TARGET = 3.0


class BatchSizes(LedgerObserver):
    """Commands and batches recorded, to report commands per batch."""

    def __init__(self) -> None:
        self.commands = 0
        self.batches = 0

    def batch_recorded(self, commands: int, events: int, *, ok: bool) -> None:
        self.commands += commands
        self.batches += 1


def measure(service: AllocationService, callers: int, seconds: float) -> dict[str, Any]:
    """`callers` threads running request + release for `seconds`."""
    ledger = service.ledger
    sizes = BatchSizes()
    ledger.observer = sizes
    cycles = [0] * callers
    start = threading.Event()
    deadline = [0.0]

    def caller(index: int) -> None:
        request = AllocationRequest(f"bench-{index}", (), 1)
        start.wait()
        while time.perf_counter() < deadline[0]:
            made = ledger.request(request)
            ledger.release(made.allocation.allocation_id)
            cycles[index] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    for thread in threads:
        thread.start()
    cpu = time.process_time()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu
    done = sum(cycles)
    return {
        "cycles_per_s": done / elapsed,
        "cpu_ms_per_cycle": 1000 * cpu / max(1, done),
        "commands_per_batch": sizes.commands / sizes.batches if sizes.batches else 1.0,
    }


def run_store(service: AllocationService, store: str, scale: Scale) -> dict[str, Any]:
    seconds = scale.pick(3.0, 1.0)
    rounds = scale.pick(3, 1)
    service.ledger.set_capacity(Resources(256_000, 1_048_576, 64))
    measure(service, 4, 0.3)  # warm: connections, caches, threads
    runs: dict[tuple[bool, int], list[dict[str, Any]]] = {}
    for _ in range(rounds):
        for group_commit in (False, True):
            service.ledger.group_commit = group_commit
            for callers in CALLERS:
                row = measure(service, callers, seconds)
                runs.setdefault((group_commit, callers), []).append(row)
    service.ledger.group_commit = True
    rows = []
    for (group_commit, callers), measured in runs.items():
        rows.append(
            {
                "store": store,
                "group_commit": group_commit,
                "callers": callers,
                "cycles_per_s": median([m["cycles_per_s"] for m in measured]),
                "cpu_ms_per_cycle": median([m["cpu_ms_per_cycle"] for m in measured]),
                "commands_per_batch": median(
                    [m["commands_per_batch"] for m in measured]
                ),
                "per_round_cycles_per_s": [m["cycles_per_s"] for m in measured],
            }
        )
    rate = {(r["group_commit"], r["callers"]): r["cycles_per_s"] for r in rows}
    for row in rows:
        row["over_one_caller"] = row["cycles_per_s"] / rate[(row["group_commit"], 1)]
        row["over_no_group_commit"] = (
            row["cycles_per_s"] / rate[(False, row["callers"])]
        )
    sixteen = rate[(True, 16)] / rate[(True, 1)]
    log(
        f"item 10 {store}: 16 callers / 1 = {sixteen:.2f} with group commit, "
        f"{rate[(False, 16)] / rate[(False, 1)]:.2f} without"
    )
    return {"rows": rows, "sixteen_over_one": sixteen}


def run(scale: Scale) -> Result:
    results: dict[str, Any] = {}
    with temporary_directory() as directory:
        service = open_bench_service(sqlite_settings(directory / "bench.db"))
        try:
            results["sqlite"] = run_store(service, "sqlite", scale)
        finally:
            service.close()
    skipped = postgres_available()
    if skipped is None:
        with postgres_schema() as schema:
            service = open_bench_service(postgres_settings(schema))
            try:
                results["postgres"] = run_store(service, "postgres", scale)
            finally:
                service.close()
    else:
        results["postgres"] = {"skipped": skipped}
    sqlite_ratio = results["sqlite"]["sixteen_over_one"]
    return {
        "item": 10,
        "title": "Group commit: concurrent callers in one process",
        "rows": [row for r in results.values() for row in r.get("rows", [])],
        "sqlite_sixteen_over_one": sqlite_ratio,
        "postgres_sixteen_over_one": results["postgres"].get("sixteen_over_one"),
        "target": f"SQLite, 16 callers >= {TARGET:g} x one caller (group commit)",
        "met": sqlite_ratio >= TARGET,
    }
