"""Audit replay and accounting on a scripted history with a fixed clock.

The figures are worked out by hand from the script in `scripted`:

    t=0    job-a: 2 workers + github, ttl 600     (2 cores, 4096 MB, ports 8000-8001)
    t=100  job-b: 4 workers                        (4 cores, 8192 MB)
    t=200  job-b released; job-c asks 20 workers: refused (available 8)
    t=700  sweep: job-a expired (lease ended at t=600)
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from allocation_ledger.adapters.charts.timeline import collect
from allocation_ledger.adapters.charts.timeline_chart import render_chart
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.pool import Pool, pool_uuid
from allocation_ledger.domain.values import AllocationRequest, Dimension
from allocation_ledger.projections.codec import allocation_to_dict, capacity_to_dict
from allocation_ledger.projections.store import ListingQuery
from allocation_ledger.projections.usage import UsageQuery


@dataclasses.dataclass
class Script:
    service: AllocationService
    start: datetime
    job_a: str
    job_b: str
    job_c: str

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)


@pytest.fixture
def scripted(ledger_service: AllocationService, manual_clock: ManualClock) -> Script:
    ledger = ledger_service.ledger
    start = manual_clock.now()
    a = ledger.request(AllocationRequest("job-a", ("github",), 2, ttl_seconds=600))
    manual_clock.advance(100)
    b = ledger.request(AllocationRequest("job-b", (), 4))
    manual_clock.advance(100)
    ledger.release(b.allocation.allocation_id)
    c = ledger.request(AllocationRequest("job-c", (), 20))
    manual_clock.advance(500)
    ledger.expire_due()
    return Script(
        ledger_service,
        start,
        a.allocation.allocation_id,
        b.allocation.allocation_id,
        c.allocation.allocation_id,
    )


def test_history_lists_every_event_of_an_allocation_with_time_and_actor(
    scripted: Script,
) -> None:
    history = audit.allocation_history(scripted.service, scripted.job_a)
    assert [(h.event, h.actor, h.at) for h in history] == [
        ("Requested", "local", scripted.at(0)),
        ("Activated", "local", scripted.at(0)),
        ("Expired", "system:sweeper", scripted.at(700)),
    ]
    assert history[0].changes["request"]["job_id"] == "job-a"
    assert history[0].changes["worker_ports"] == [8000, 8001]
    assert history[2].changes["expires_at"] == scripted.at(600).isoformat()

    refused = audit.allocation_history(scripted.service, scripted.job_c)
    assert [h.event for h in refused] == ["Requested", "Rejected"]
    assert refused[1].changes["reason"] == {
        "code": "insufficient_capacity",
        "dimension": "workers",
        "requested": 20,
        "available": 8,
    }


def test_capacity_at_a_past_moment_is_rebuilt_from_the_log(scripted: Script) -> None:
    before_release = audit.capacity_at(scripted.service, scripted.at(150))
    assert before_release.capacity.reserved.workers == 6
    assert before_release.capacity.reserved.cpu_millicores == 6000
    assert before_release.capacity.reserved.memory_mib == 12288
    assert [v.job_id for v in before_release.live] == ["job-a", "job-b"]
    assert before_release.capacity.servers["github"].references == 1

    after_release = audit.capacity_at(scripted.service, scripted.at(250))
    assert after_release.capacity.reserved.workers == 2
    assert [v.job_id for v in after_release.live] == ["job-a"]

    after_expiry = audit.capacity_at(scripted.service, scripted.at(800))
    assert after_expiry.capacity.reserved.workers == 0
    assert after_expiry.live == []
    assert after_expiry.capacity.servers["github"].status == "idle"


def test_usage_per_job_is_exact(scripted: Script) -> None:
    rows = {
        r.job_id: r.as_dict()
        for r in audit.usage(scripted.service, UsageQuery(), scripted.at(1000))
    }
    # job-a held 2 cores from t=0 to its lease's end at t=600, not to the sweep.
    assert rows["job-a"] == {
        "job_id": "job-a",
        "pool": "default",
        "cpu_core_seconds": 1200.0,
        "memory_mb_seconds": 4096 * 600.0,
        "worker_seconds": 1200.0,
        "mcp_server_seconds": 600.0,
        "allocations": {"expired": 1},
    }
    assert rows["job-b"]["cpu_core_seconds"] == 400.0
    assert rows["job-b"]["allocations"] == {"released": 1}
    assert rows["job-c"]["cpu_core_seconds"] == 0.0
    assert rows["job-c"]["allocations"] == {"failed": 1}


def test_usage_in_a_window_counts_only_the_overlap(scripted: Script) -> None:
    window = UsageQuery(since=scripted.at(50), until=scripted.at(150))
    rows = {
        r.job_id: r for r in audit.usage(scripted.service, window, scripted.at(1000))
    }
    assert rows["job-a"].cpu_core_seconds == 200.0  # 2 cores x 100 s
    assert rows["job-b"].cpu_core_seconds == 200.0  # 4 cores x 50 s
    assert rows["job-b"].allocations == {"released": 1}  # requested in the window
    assert rows["job-a"].allocations == {}
    assert "job-c" not in rows

    only_b = audit.usage(scripted.service, UsageQuery(job_id="job-b"))
    assert [r.job_id for r in only_b] == ["job-b"]


def test_live_allocation_accrues_until_now(
    ledger_service: AllocationService, manual_clock: ManualClock
) -> None:
    ledger_service.ledger.request(AllocationRequest("job-live", (), 1))
    manual_clock.advance(30)
    [row] = audit.usage(ledger_service, UsageQuery())
    assert row.worker_seconds == 30.0
    assert row.allocations == {"active": 1}


def test_verify_is_clean_on_a_ledger_written_history(scripted: Script) -> None:
    report = audit.verify(scripted.service)
    assert report.clean, report.as_dict()
    assert report.allocations == 3
    assert report.pools == 1
    assert report.events == report.position


def test_verify_reports_an_event_inserted_behind_the_ledgers_back(
    scripted: Script,
) -> None:
    ledger = scripted.service.ledger
    pool = ledger.pool("default")
    forged = Pool.Reserved(  # type: ignore[call-arg]
        originator_id=pool_uuid("default"),
        originator_version=pool.version + 1,
        timestamp=scripted.at(900),
        actor="intruder",
        allocation_id="alloc-000000000000",
        resources={"cpu_millicores": 99_000, "memory_mib": 1, "workers": 50},
        worker_ports=[8500],
        servers=[],
        expires_at=scripted.at(2000),
    )
    ledger.recorder.insert_events([ledger.mapper.to_stored_event(forged)])
    position = ledger.recorder.max_notification_id()

    report = audit.verify(scripted.service)
    assert not report.clean
    assert report.violation is not None
    assert report.violation.position == position
    assert report.violation.invariant == 1
    assert "over-committed" in report.violation.message


def test_rebuild_gives_read_models_equal_to_the_live_ones(scripted: Script) -> None:
    store = scripted.service.store
    scripted.service.read_models.catch_up()

    before = (
        [allocation_to_dict(v) for v in store.list_allocations(ListingQuery())],
        [capacity_to_dict(v) for v in store.list_capacities()],
    )
    scripted.service.projector.rebuild()
    after = (
        [allocation_to_dict(v) for v in store.list_allocations(ListingQuery())],
        [capacity_to_dict(v) for v in store.list_capacities()],
    )
    assert after == before
    assert len(before[0]) == 3


def test_export_gives_every_event_as_a_json_record(scripted: Script) -> None:
    records = list(audit.export_events(scripted.service))
    assert [r["position"] for r in records] == list(range(1, len(records) + 1))
    assert {r["aggregate"] for r in records} == {"allocation", "pool", "pool-registry"}
    first_release = next(r for r in records if r["type"] == "Released")
    assert first_release["time"] == scripted.at(200).isoformat()
    later = list(audit.export_events(scripted.service, since=records[-3]["position"]))
    assert later == records[-2:]


def test_timeline_marks_expiries_and_rejections(scripted: Script) -> None:
    ledger = scripted.service.ledger
    timeline = collect(ledger.recorder, scripted.service.projector.decode, "default")
    assert timeline.rejections == [scripted.at(200)]
    # job-a's lease ended at t=600; the sweep noticed at t=700. The chart, like
    # usage, gives its capacity back at the lease's end.
    assert timeline.expiries == [scripted.at(600)]
    workers = [(t, r, c) for t, r, c in timeline.points[Dimension.WORKERS]]
    assert workers[0] == (scripted.at(0), 2.0, 10.0)  # one point per moment
    assert (scripted.at(100), 6.0, 10.0) in workers
    assert workers[-1] == (scripted.at(600), 0.0, 10.0)
    svg = render_chart(timeline, fmt="svg").decode()
    assert "<svg" in svg and svg.rstrip().endswith("</svg>")
    assert "Pool default" in svg
    assert "rejected request" in svg  # the legend names the marks shown
    assert "lease ran out" in svg
    png = render_chart(timeline, fmt="png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def _rewrite_stored_row(
    service: AllocationService, allocation_id: str, text: str | None
) -> None:
    """Replace (or, with None, delete) an allocation's stored listing row
    behind the read models' back; only stores that keep rows as text."""
    store: Any = service.store
    if not hasattr(store, "allocation_documents"):
        pytest.skip("the store keeps no row documents")
    key = allocation_uuid(allocation_id).hex
    with store.dialect.transaction(write=True) as cursor:
        if text is None:
            cursor.execute(
                store.dialect.sql(
                    "DELETE FROM ledger_allocation_view WHERE aggregate_id = ?"
                ),
                [key],
            )
        else:
            cursor.execute(
                store.dialect.sql(
                    "UPDATE ledger_allocation_view SET doc = ? WHERE aggregate_id = ?"
                ),
                [text, key],
            )


def _stored_document(service: AllocationService, allocation_id: str) -> Any:
    key = allocation_uuid(allocation_id)
    return dict(service.store.allocation_documents([key])[key])  # type: ignore[attr-defined]


def test_verify_reports_a_stored_row_that_differs_from_the_replay(
    scripted: Script,
) -> None:
    scripted.service.read_models.catch_up()
    if not hasattr(scripted.service.store, "allocation_documents"):
        pytest.skip("the store keeps no row documents")
    document = _stored_document(scripted.service, scripted.job_a)
    document["renewals"] = 7
    _rewrite_stored_row(scripted.service, scripted.job_a, json.dumps(document))

    report = audit.verify(scripted.service)
    assert report.violation is None
    assert report.mismatches == [
        f"allocation {scripted.job_a} differs in read model"
    ], report.as_dict()


def test_verify_reports_a_stored_row_that_is_missing(scripted: Script) -> None:
    scripted.service.read_models.catch_up()
    _rewrite_stored_row(scripted.service, scripted.job_b, None)

    report = audit.verify(scripted.service)
    assert report.mismatches == [f"allocation {scripted.job_b} is not in read model"]


def test_verify_takes_a_row_spelled_otherwise_as_the_same_row(
    scripted: Script,
) -> None:
    scripted.service.read_models.catch_up()
    if not hasattr(scripted.service.store, "allocation_documents"):
        pytest.skip("the store keeps no row documents")
    document = _stored_document(scripted.service, scripted.job_c)
    respelled = json.dumps(dict(reversed(document.items())), indent=2)
    _rewrite_stored_row(scripted.service, scripted.job_c, respelled)

    report = audit.verify(scripted.service)
    assert report.clean, report.as_dict()
