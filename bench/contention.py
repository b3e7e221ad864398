"""Item 5: several writer processes on one PostgreSQL database.

For 1, 2 and 4 writers (each a separate process with its own service, on a
fresh schema), every writer runs request + release cycles on the one pool for
the same wall-clock window after a common start; the total throughput and the
conflict retries per command (the Ledger's `conflicts` counter over requests
and releases) are reported, and the ratio of 4 writers to 1. A command that
loses to concurrent updates on every attempt (ConcurrentUpdateError) is
counted as "gave up"; a release that gave up is tried again.

Each round runs with the writers' lock (adapters/storage/writer_lock.py:
servers decide one at a time) and, as the baseline, without it (servers
decide at once and the losers retry).
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from allocation_ledger.domain.errors import ConcurrentUpdateError
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from bench.common import (
    Result,
    Scale,
    log,
    open_bench_service,
    postgres_available,
    postgres_schema,
    postgres_settings,
)

MAX_ATTEMPTS = 8  # the Ledger's default max_attempts


def _release(service: Any, allocation_id: str) -> int:
    """Release, trying again while it loses to concurrent updates; give-ups."""
    gave_up = 0
    while True:
        try:
            service.ledger.release(allocation_id)
        except ConcurrentUpdateError:
            gave_up += 1
        else:
            return gave_up


def writer(
    schema: str,
    index: int,
    queues: tuple[Any, Any],
    start: Any,
    seconds: float,
    *,
    writer_lock: bool,
) -> None:
    ready, results = queues
    try:
        service = open_bench_service(postgres_settings(schema))
        if not writer_lock:
            service.ledger.writer_lock = None
    except Exception as error:  # noqa: BLE001 - reported to the parent
        ready.put(index)
        results.put({"index": index, "error": repr(error)})
        return
    try:
        request = AllocationRequest(f"bench-writer-{index}", ("github",), 1)
        made = service.ledger.request(request)  # warm: connections, caches
        _release(service, made.allocation.allocation_id)
        service.ledger.conflicts = 0
        ready.put(index)
        start.wait()
        deadline = time.perf_counter() + seconds
        cycles = gave_up = rejected = 0
        while time.perf_counter() < deadline:
            try:
                made = service.ledger.request(request)
            except ConcurrentUpdateError:
                gave_up += 1
                continue
            if made.allocation.state is AllocationState.FAILED:
                rejected += 1
            gave_up += _release(service, made.allocation.allocation_id)
            cycles += 1
        results.put(
            {
                "index": index,
                "cycles": cycles,
                "conflicts": service.ledger.conflicts,
                "gave_up": gave_up,
                "rejected": rejected,
            }
        )
    except Exception as error:  # noqa: BLE001 - reported to the parent
        results.put({"index": index, "error": repr(error)})
    finally:
        service.close()


def measure(writers: int, seconds: float, *, writer_lock: bool) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    with postgres_schema() as schema:
        ready = context.Queue()
        results = context.Queue()
        start = context.Event()
        processes = [
            context.Process(
                target=writer,
                args=(schema, i, (ready, results), start, seconds),
                kwargs={"writer_lock": writer_lock},
            )
            for i in range(writers)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        started = time.perf_counter()
        start.set()
        outcomes = [results.get(timeout=seconds + 120) for _ in processes]
        elapsed = time.perf_counter() - started
        for process in processes:
            process.join(timeout=60)
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:
        msg = f"writers failed: {errors}"
        raise RuntimeError(msg)
    cycles = sum(o["cycles"] for o in outcomes)
    conflicts = sum(o["conflicts"] for o in outcomes)
    row = {
        "writer_lock": writer_lock,
        "writers": writers,
        "seconds": elapsed,
        "cycles": cycles,
        "cycles_per_s": cycles / elapsed,
        "conflicts": conflicts,
        "conflicts_per_command": conflicts / max(1, 2 * cycles),
        "gave_up": sum(o["gave_up"] for o in outcomes),
        "rejected": sum(o["rejected"] for o in outcomes),
        "per_writer_cycles": sorted(o["cycles"] for o in outcomes),
    }
    log(
        f"item 5 {writers} writers ({'with' if writer_lock else 'without'} "
        f"the writers' lock): {row['cycles_per_s']:.1f} cycles/s, "
        f"{row['conflicts_per_command']:.2f} conflicts/command, "
        f"{row['gave_up']} gave up after {MAX_ATTEMPTS} attempts"
    )
    return row


def run(scale: Scale) -> Result:
    skipped = postgres_available()
    if skipped is not None:
        return {"item": 5, "title": "Contention on PostgreSQL", "skipped": skipped}
    seconds = scale.pick(6.0, 2.0)
    rounds = scale.pick(3, 1)
    # The machine's load drifts: 1, 2 and 4 writers, with and without the
    # writers' lock, take turns, round after round; each figure is the
    # median over rounds.
    measured: dict[tuple[bool, int], list[dict[str, Any]]] = {
        (lock, writers): [] for lock in (True, False) for writers in (1, 2, 4)
    }
    for _ in range(rounds):
        for (lock, writers), runs in measured.items():
            runs.append(measure(writers, seconds, writer_lock=lock))
    rows = []
    for runs in measured.values():
        rates = sorted(r["cycles_per_s"] for r in runs)
        row = dict(runs[0])
        row["rounds"] = len(runs)
        row["cycles_per_s"] = rates[len(rates) // 2]
        row["cycles"] = sum(r["cycles"] for r in runs)
        row["conflicts"] = sum(r["conflicts"] for r in runs)
        row["conflicts_per_command"] = row["conflicts"] / max(1, 2 * row["cycles"])
        row["gave_up"] = sum(r["gave_up"] for r in runs)
        row["rejected"] = sum(r["rejected"] for r in runs)
        row["seconds"] = sum(r["seconds"] for r in runs)
        row["per_round_cycles_per_s"] = [r["cycles_per_s"] for r in runs]
        del row["per_writer_cycles"]
        rows.append(row)
    one = {r["writer_lock"]: r["cycles_per_s"] for r in rows if r["writers"] == 1}
    for row in rows:
        row["over_one_writer"] = row["cycles_per_s"] / one[row["writer_lock"]]
    four = next(r for r in rows if r["writer_lock"] and r["writers"] == 4)
    four_without = next(r for r in rows if not r["writer_lock"] and r["writers"] == 4)
    return {
        "item": 5,
        "title": "Contention: writer processes on one PostgreSQL database",
        "rows": rows,
        "four_over_one": four["over_one_writer"],
        "four_over_one_without_lock": four_without["over_one_writer"],
        "target": "4 writers >= 1.0 x one writer (total throughput)",
        "met": four["over_one_writer"] >= 1.0,
    }
