"""Item 6: peak resident memory of a ledger holding many live allocations.

Filling a pool with 100,000 live allocations through the Ledger on a SQLite
file takes two durable commits each (minutes on a slow disk), so the history
is generated once with the domain aggregates (every allocation a request for
no workers and no servers, all still live; see bench/history.py) and cached.
A fresh process then opens the service on a copy, notes its peak RSS, makes
more such requests through the Ledger (the first loads the Pool with every
live reservation), catches the read models up with a capacity query, and
reports its peak RSS again (resource.getrusage: the true peak).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from allocation_ledger.domain.values import AllocationRequest
from bench.common import (
    Result,
    Scale,
    log,
    now,
    open_bench_service,
    run_child,
    sqlite_settings,
    temporary_directory,
)
from bench.history import cached_log
from bench.rebuild import copy_log


def peak_rss_mib() -> float:
    """This process's peak RSS: getrusage (KiB on Linux).

    On Linux ru_maxrss survives exec, so the parent must be small when it
    starts this process: the log is generated in a process of its own.
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def child(database: Path, live: int, more: int) -> dict[str, Any]:
    """Open the service on `database` (holding `live` live allocations), add more."""
    service = open_bench_service(sqlite_settings(database))
    try:
        request = AllocationRequest("bench-memory", (), 0)
        baseline = peak_rss_mib()
        start = now()
        service.ledger.request(request)
        first = now() - start
        after_load = peak_rss_mib()
        start = now()
        for _ in range(more - 1):
            service.ledger.request(request)
        elapsed = now() - start
        start = now()
        capacity = service.read_models.capacity()
        caught_up = now() - start
        assert capacity is not None and capacity.live_allocations == live + more
        peak = peak_rss_mib()
        current = _status_mib("VmRSS")
        high_water = _status_mib("VmHWM")
    finally:
        service.close()
    return {
        "live_allocations": live + more,
        "baseline_peak_rss_mib": baseline,
        "peak_rss_after_pool_load_mib": after_load,
        "peak_rss_mib": peak,
        "vm_hwm_mib": high_water,
        "rss_at_end_mib": current,
        "bytes_per_live_allocation": (peak - baseline) * 1024 * 1024 / (live + more),
        "first_request_seconds": first,
        "requests_per_s": (more - 1) / elapsed,
        "read_model_catch_up_seconds": caught_up,
    }


def run(scale: Scale) -> Result:
    more = scale.pick(1_000, 200)
    live = scale.pick(100_000, 5_000) - more
    subprocess.run(
        [sys.executable, "-m", "bench.memory", "--generate", str(live)], check=True
    )
    info = cached_log("memory", allocations=live, live_only=True)
    with temporary_directory() as directory:
        database = copy_log(info, directory)
        row = run_child("bench.memory", str(database), str(live), str(more))
        # The same ledger started again: the pool now loads from the snapshot
        # the first start took (if it took one), read models are caught up.
        again = run_child("bench.memory", str(database), str(live + more), str(more))
    for name, figures in (("first start", row), ("restart", again)):
        log(
            f"item 6 {name}: {figures['live_allocations']:,} live, peak RSS "
            f"{figures['peak_rss_mib']:.0f} MiB (at start "
            f"{figures['baseline_peak_rss_mib']:.0f} MiB, at end "
            f"{figures['rss_at_end_mib']:.0f} MiB), first request "
            f"{figures['first_request_seconds']:.2f}s, "
            f"{figures['requests_per_s']:.0f} requests/s"
        )
    row["restart"] = again
    return {
        "item": 6,
        "title": "Peak RSS with live allocations (SQLite, one process)",
        "row": row,
        "ratio_to_baseline": row["peak_rss_mib"] / row["baseline_peak_rss_mib"],
        "restart_peak_rss_mib": again["peak_rss_mib"],
        "restart_first_request_seconds": again["first_request_seconds"],
        "target": "none set: reported",
    }


if __name__ == "__main__":
    if sys.argv[1] == "--generate":
        cached_log("memory", allocations=int(sys.argv[2]), live_only=True)
    else:
        print(json.dumps(child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))))
