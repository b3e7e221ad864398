"""Item 9: audits of a big history (verify, export, usage, capacity --at).

On the rebuild benchmark's log (about 1,000,000 events, and one of about
200,000 beside it to show whether memory grows with the history), each
command runs in a fresh process that reports its time and its peak RSS
(resource.getrusage: the true peak), beside the raw read of the same log in
a process of its own (the recorder's `select_notifications`, batches of
10,000, nothing done with them: item 2's baseline) in the same run.

Before the commands, the read models are built on a copy of the log (a
rebuild, in a process of its own): `verify` compares them with its replay,
and `usage` reads them. The parent stays small (it generates nothing
itself), since on Linux a child's ru_maxrss starts from its parent's.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.storage import audit
from allocation_ledger.projections.usage import UsageQuery
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
from bench.history import LogInfo, cached_log
from bench.rebuild import copy_log, raw_read

COMMANDS = ("raw", "verify", "export", "usage", "capacity_at")
VERIFY_SECONDS = 30.0
VERIFY_PEAK_MIB = 250.0
LATE = datetime(2100, 1, 1, tzinfo=UTC)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(database: Path, command: str) -> dict[str, Any]:
    """Run one command on the ledger at `database`: its time and peak RSS."""
    service = open_bench_service(sqlite_settings(database))
    try:
        opened = peak_rss_mib()
        start = now()
        cpu_start = time.process_time()
        figures: dict[str, Any] = {}
        if command == "prepare":
            figures["position"] = service.projector.rebuild()
        elif command == "raw":
            figures["events"] = raw_read(service.ledger.recorder)[0]
        elif command == "verify":
            report = audit.verify(service)
            assert report.clean, report.as_dict()
            figures["events"] = report.events
        elif command == "export":
            written = 0
            for record in audit.export_events(service):
                written += len(json.dumps(record, separators=(",", ":"))) + 1
            figures["bytes"] = written
        elif command == "usage":
            figures["rows"] = len(audit.usage(service, UsageQuery(), LATE))
        elif command == "capacity_at":
            found = audit.capacity_at(service, LATE)
            figures["position"] = found.position
        else:
            raise ValueError(command)
        seconds = now() - start
        cpu_seconds = time.process_time() - cpu_start
    finally:
        service.close()
    return figures | {
        "command": command,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load_average": os.getloadavg()[0],
        "peak_rss_mib": peak_rss_mib(),
        "rss_after_open_mib": opened,
    }


def _log_info(events: int) -> LogInfo:
    """The cached log of about `events` events, generated in another process."""
    subprocess.run(
        [sys.executable, "-m", "bench.audit", "--generate", str(events)], check=True
    )
    return cached_log("rebuild", events=events)


def measure(events: int) -> dict[str, Any]:
    """Every command on a copy of the log of about `events` events."""
    info = _log_info(events)
    with temporary_directory() as directory:
        database = copy_log(info, directory)
        run_child("bench.audit", str(database), "prepare")
        rows = {
            command: run_child("bench.audit", str(database), command)
            for command in COMMANDS
        }
    raw = rows["raw"]
    size = raw["events"]
    for command, row in rows.items():
        row["events_per_s"] = size / row["seconds"]
        row["over_raw_read"] = raw["seconds"] / row["seconds"]
        row["cpu_over_raw_read"] = raw["cpu_seconds"] / row["cpu_seconds"]
        log(
            f"item 9, {size:,} events: {command} {row['seconds']:.1f}s "
            f"({row['events_per_s']:,.0f} events/s, {row['over_raw_read']:.2f} of "
            f"the raw read; CPU {row['cpu_seconds']:.1f}s, "
            f"{row['cpu_over_raw_read']:.2f}), peak RSS "
            f"{row['peak_rss_mib']:.0f} MiB, load {row['load_average']:.1f}"
        )
    return {"events": size, "allocations": info.allocations, "commands": rows}


def run(scale: Scale) -> Result:
    small, big = scale.pick((200_000, 1_000_000), (20_000, 60_000))
    sizes = [measure(small), measure(big)]
    last = sizes[-1]["commands"]
    growth = {
        command: last[command]["peak_rss_mib"]
        - sizes[0]["commands"][command]["peak_rss_mib"]
        for command in COMMANDS
    }
    verify = last["verify"]
    return {
        "item": 9,
        "title": "Audits of a big history: verify, export, usage, capacity --at",
        "sizes": sizes,
        "peak_rss_growth_mib": growth,
        "verify_seconds": verify["seconds"],
        "verify_peak_rss_mib": verify["peak_rss_mib"],
        "verify_over_raw_read": verify["over_raw_read"],
        "target": (
            f"verify of the biggest log <= {VERIFY_SECONDS:.0f} s, peak RSS <= "
            f"{VERIFY_PEAK_MIB:.0f} MB and not growing with history"
        ),
        "met": verify["seconds"] <= VERIFY_SECONDS
        and verify["peak_rss_mib"] <= VERIFY_PEAK_MIB,
    }


if __name__ == "__main__":
    if sys.argv[1] == "--generate":
        cached_log("rebuild", events=int(sys.argv[2]))
    else:
        print(json.dumps(child(Path(sys.argv[1]), sys.argv[2])))
