"""Item 2: rebuilding every read model from a big log, beside the raw read.

The raw read pulls the same notifications through the event store's recorder
(`select_notifications`, batches of 10,000) and does nothing with them: the
baseline the target refers to. Reported beside it, for insight: the same read
through the projector's own log reader (on SQLite a plain SELECT, see
adapters/storage/event_log.py), that read plus the projector's decoder, and the
library's recorder plus mapper. The rebuild is `Projector.rebuild` on the SQL
read models in the same SQLite file, as the service does it.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.storage.service import AllocationService
from bench.common import (
    Result,
    Scale,
    log,
    median,
    now,
    open_bench_service,
    sqlite_settings,
    temporary_directory,
)
from bench.history import LogInfo, cached_log

RAW_BATCH = 10_000


def copy_log(info: LogInfo, directory: Path) -> Path:
    target = directory / "ledger.db"
    shutil.copyfile(info.path, target)
    return target


def raw_read(log: Any, decode: Any = None) -> tuple[int, float]:
    """Read every notification in batches (decoding each if asked); count, time."""
    position = 0
    count = 0
    start = now()
    while True:
        notifications = log.select_notifications(
            position, RAW_BATCH, inclusive_of_start=False
        )
        if not notifications:
            break
        if decode is not None:
            for notification in notifications:
                decode(notification)
        count += len(notifications)
        position = notifications[-1].id
    return count, now() - start


def check(service: AllocationService, info: LogInfo) -> dict[str, Any]:
    """The rebuilt read models agree with the generated history."""
    capacity = service.store.get_capacity("default")
    assert capacity is not None
    pool = service.ledger.pool("default")
    assert capacity.reserved == pool.reserved, (capacity.reserved, pool.reserved)
    assert capacity.live_allocations == len(pool.reservations) == len(info.live)
    for allocation_id in info.live:
        view = service.store.get_allocation(allocation_id)
        assert view is not None and view.state == "active", view
    return {"live_allocations": capacity.live_allocations}


def run(scale: Scale) -> Result:
    target = scale.pick(1_000_000, 60_000)
    info = cached_log("rebuild", events=target)
    with temporary_directory() as directory:
        path = copy_log(info, directory)
        service = open_bench_service(sqlite_settings(path))
        try:
            recorder = service.ledger.recorder
            log_ = service.projector.log
            raw_count, raw_first = raw_read(recorder)
            reader_count, reader_time = raw_read(log_)
            decoded_count, decoded_time = raw_read(log_, service.projector.decode)
            mapped_count, mapped_time = raw_read(
                recorder, service.ledger.mapper.to_domain_event
            )
            start = now()
            cpu_start = time.process_time()
            position = service.projector.rebuild()
            rebuild_time = now() - start
            rebuild_cpu = time.process_time() - cpu_start
            cpu_start = time.process_time()
            raw_again = raw_read(recorder)[1]
            raw_cpu = time.process_time() - cpu_start
            checked = check(service, info)
        finally:
            service.close()
    raw_time = median([raw_first, raw_again])
    events = raw_count
    assert decoded_count == reader_count == mapped_count == events and position > 0
    raw_rate = events / raw_time
    reader_rate = events / reader_time
    rebuild_rate = events / rebuild_time
    result: Result = {
        "item": 2,
        "title": "Rebuild of every read model from a generated log (SQLite)",
        "events": events,
        "allocations": info.allocations,
        "raw_read_events_per_s": raw_rate,
        "reader_events_per_s": reader_rate,
        "read_decode_events_per_s": decoded_count / decoded_time,
        "library_read_decode_events_per_s": mapped_count / mapped_time,
        "rebuild_events_per_s": rebuild_rate,
        "rebuild_seconds": rebuild_time,
        "rebuild_over_raw": rebuild_rate / raw_rate,
        "rebuild_over_reader": rebuild_rate / reader_rate,
        "rebuild_cpu_seconds": rebuild_cpu,
        "raw_read_cpu_seconds": raw_cpu,
        "rebuild_over_raw_cpu": raw_cpu / rebuild_cpu,
        "load_average": os.getloadavg()[0],
        "check": checked,
        "target": "rebuild >= 100,000 events/s and >= 0.5 of the raw read",
        "met": rebuild_rate >= 100_000 and rebuild_rate / raw_rate >= 0.5,
    }
    log(
        f"item 2: {events:,} events, raw {raw_rate:,.0f}/s, "
        f"reader {reader_rate:,.0f}/s, "
        f"read+decode {result['read_decode_events_per_s']:,.0f}/s "
        f"(library {result['library_read_decode_events_per_s']:,.0f}/s), "
        f"rebuild {rebuild_rate:,.0f}/s ({rebuild_time:.1f}s), "
        f"ratio {result['rebuild_over_raw']:.2f} (in CPU time "
        f"{result['rebuild_over_raw_cpu']:.2f}; load {result['load_average']:.1f})"
    )
    return result
