"""Usage bills reserved time only, and every store, tool and chart agrees.

The history (issue 12, item 4), on a pool of 1 worker (1 core, 2048 MiB):

    t=0    holder takes the worker; A (wait) and B (wait, max 600 s) queue
    t=300  "while queued": A and B have held nothing
    t=600  holder released: A is granted, B times out
    t=630  A has held its worker 30 s
    t=660  A released

Expected: A 60 worker-seconds (60 core-seconds, 60 x 2048 MB-seconds), B 0,
holder 600; while A and B are queued, 0 for both, on every store.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from allocation_ledger.adapters.charts.timeline import collect
from allocation_ledger.adapters.cli import main
from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
)
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Dimension,
    Resources,
)
from allocation_ledger.projections.usage import UsageQuery
from tests.ledger_support import OpenService
from tests.mcp_support import call
from tests.postgres import postgres_schema, postgres_settings

__all__ = ["postgres_schema"]

ONE_WORKER_POOL = Resources(16_000, 32_768, 1)
ZERO = {
    "cpu_core_seconds": 0.0,
    "memory_mb_seconds": 0.0,
    "worker_seconds": 0.0,
    "mcp_server_seconds": 0.0,
}


def held(seconds: float) -> dict[str, float]:
    """What one default worker (1 core, 2048 MiB) held for `seconds` bills."""
    return {
        "cpu_core_seconds": seconds,
        "memory_mb_seconds": 2048 * seconds,
        "worker_seconds": seconds,
        "mcp_server_seconds": 0.0,
    }


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def usage_settings(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Settings]:
    """Each store the read models can live in (PostgreSQL in a fresh schema)."""
    if request.param == "memory":
        yield Settings(store="memory")
    elif request.param == "sqlite":
        yield Settings(store="sqlite", database=tmp_path / "ledger.db")
    else:
        schema = request.getfixturevalue("postgres_schema")
        settings = postgres_settings(schema)
        init_database(settings)
        yield settings


@dataclass
class Queue:
    service: AllocationService
    clock: ManualClock
    start: datetime
    holder: str
    a: str
    b: str

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def until(self, seconds: float) -> None:
        self.clock.set(self.at(seconds))

    def usage(self, **query: Any) -> dict[str, dict[str, Any]]:
        """Usage per job through the Python API, at the clock's time."""
        rows = audit.usage(self.service, UsageQuery(**query), self.clock.now())
        return {r.job_id: r.as_dict() for r in rows}

    def store_usage(self) -> dict[str, dict[str, Any]]:
        """The store's own answer, caught up (what get_usage sums over)."""
        self.service.read_models.catch_up()
        rows = self.service.store.usage(UsageQuery(), self.clock.now())
        return {r.job_id: r.as_dict() for r in rows}


def figures(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k in ZERO}


@pytest.fixture
def queue(
    usage_settings: Settings, open_services: OpenService, manual_clock: ManualClock
) -> Queue:
    """The history up to t=0: holder holds the only worker; A and B queue."""
    service = open_services(usage_settings)
    ledger = service.ledger
    start = manual_clock.now()
    ledger.set_capacity(ONE_WORKER_POOL)
    holder = ledger.request(AllocationRequest("holder", (), 1))
    a = ledger.request(AllocationRequest("A", (), 1), wait=True)
    b = ledger.request(AllocationRequest("B", (), 1), wait=True, max_wait_seconds=600)
    assert a.allocation.state is AllocationState.QUEUED
    assert b.allocation.state is AllocationState.QUEUED
    return Queue(
        service,
        manual_clock,
        start,
        holder.allocation.allocation_id,
        a.allocation.allocation_id,
        b.allocation.allocation_id,
    )


def run_to_the_end(queue: Queue) -> None:
    ledger = queue.service.ledger
    queue.until(600)
    ledger.release(queue.holder)
    assert ledger.allocation(queue.a).state is AllocationState.ACTIVE
    assert ledger.allocation(queue.b).state is AllocationState.FAILED
    queue.until(660)
    ledger.release(queue.a)
    queue.until(1000)


def test_while_queued_every_store_bills_nothing(queue: Queue) -> None:
    queue.until(300)
    for usage in (queue.usage(), queue.store_usage()):
        assert figures(usage["A"]) == ZERO
        assert figures(usage["B"]) == ZERO
        assert usage["A"]["allocations"] == {"queued": 1}
        assert figures(usage["holder"]) == held(300)


def test_the_granted_request_bills_from_its_grant(queue: Queue) -> None:
    queue.until(600)
    queue.service.ledger.release(queue.holder)
    queue.until(630)
    usage = queue.usage()
    assert figures(usage["A"]) == held(30)  # live: from the grant to now
    assert figures(usage["B"]) == ZERO
    assert queue.store_usage() == usage


def test_only_reserved_time_is_billed(queue: Queue) -> None:
    run_to_the_end(queue)
    usage = queue.usage()
    assert usage["A"] == {
        "job_id": "A",
        "pool": "default",
        **held(60),
        "allocations": {"released": 1},
    }
    assert usage["B"] == {
        "job_id": "B",
        "pool": "default",
        **ZERO,
        "allocations": {"failed": 1},
    }
    assert figures(usage["holder"]) == held(600)
    assert queue.store_usage() == usage


def test_a_window_bills_the_reserved_part_inside_it(queue: Queue) -> None:
    run_to_the_end(queue)
    # [300, 630): A reserved from 600, so 30 s; B never; holder 300 s.
    usage = queue.usage(since=queue.at(300), until=queue.at(630))
    assert figures(usage["A"]) == held(30)
    assert "B" not in usage  # held nothing, and requested before the window
    assert figures(usage["holder"]) == held(300)
    # Before the grant, nothing at all for A.
    early = queue.usage(since=queue.at(1), until=queue.at(600))
    assert "A" not in early
    assert figures(early["holder"]) == held(599)


@pytest.mark.anyio
async def test_get_usage_answers_the_same(queue: Queue) -> None:
    async def told() -> dict[str, dict[str, Any]]:
        async with Client(stdio_server(queue.service)) as client:
            result = await call(client, "get_usage")
        return {row["job_id"]: row for row in result["usage"]}

    queue.until(300)
    while_queued = await told()
    assert figures(while_queued["A"]) == ZERO
    assert figures(while_queued["B"]) == ZERO

    run_to_the_end(queue)
    usage = await told()
    assert figures(usage["A"]) == held(60)
    assert figures(usage["B"]) == ZERO
    assert figures(usage["holder"]) == held(600)
    assert usage == queue.usage()


@pytest.mark.anyio
async def test_an_until_in_the_future_is_answered_as_now(queue: Queue) -> None:
    """Nothing is billed past now; the answer said `until: 2099-…` all the
    same, as if it had counted up to then. It says where billing ended."""
    queue.until(630)  # A holds its worker: billed up to now
    async with Client(stdio_server(queue.service)) as client:
        # B's wait ran out at 600: its timeout is recorded first, so that the
        # server's own sweep cannot record it between the two calls.
        await call(client, "cleanup_expired")
        far = await call(client, "get_usage", until="2099-01-01T00:00:00Z")
        plain = await call(client, "get_usage")
        past = await call(client, "get_usage", until=queue.at(300).isoformat())
    assert far == plain
    assert datetime.fromisoformat(far["until"]) == queue.at(630)
    assert datetime.fromisoformat(past["until"]) == queue.at(300)


def test_the_timeline_charts_reserved_time_only(queue: Queue) -> None:
    run_to_the_end(queue)
    service = queue.service
    timeline = collect(service.ledger.recorder, service.projector.decode, "default")
    workers = timeline.points[Dimension.WORKERS]
    # Nothing changes when A and B queue (t=0) or B times out (t=600).
    assert workers == [
        (queue.at(0), 1.0, 1.0),
        (queue.at(600), 1.0, 1.0),
        (queue.at(660), 0.0, 1.0),
    ]
    area = sum(
        reserved * (later - moment).total_seconds()
        for (moment, reserved, _), (later, _, _) in itertools.pairwise(workers)
    )
    billed = sum(r["worker_seconds"] for r in queue.usage().values())
    assert area == billed == 660.0


def test_the_usage_command_answers_the_same(
    tmp_path: Path,
    open_services: OpenService,
    manual_clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    database = tmp_path / "ledger.db"
    service = open_services(Settings(store="sqlite", database=database))
    ledger = service.ledger
    start = manual_clock.now()
    ledger.set_capacity(ONE_WORKER_POOL)
    holder = ledger.request(AllocationRequest("holder", (), 1))
    a = ledger.request(AllocationRequest("A", (), 1), wait=True)
    ledger.request(AllocationRequest("B", (), 1), wait=True, max_wait_seconds=600)
    manual_clock.advance(600)
    ledger.release(holder.allocation.allocation_id)
    manual_clock.advance(60)
    ledger.release(a.allocation.allocation_id)
    service.close()

    for name in ("STORE", "CONFIG"):
        monkeypatch.delenv(f"ALLOCATION_LEDGER_{name}", raising=False)
    monkeypatch.setenv("ALLOCATION_LEDGER_DATABASE", str(database))
    until = (start + timedelta(seconds=1000)).isoformat()
    assert main(["usage", "--until", until, "--json"]) == 0
    rows = {r["job_id"]: r for r in json.loads(capfd.readouterr().out)["usage"]}
    assert figures(rows["A"]) == held(60)
    assert figures(rows["B"]) == ZERO
    assert figures(rows["holder"]) == held(600)


def test_a_grant_after_the_worker_size_changed_bills_the_size_it_holds(
    queue: Queue,
) -> None:
    """A waits while the pool's worker size doubles; granted at 600 s, it
    holds (and is billed) two cores and 4096 MB for its 60 s, on every store
    and in the Python API alike: what the pool reserved, not what the request
    cost when it was queued."""
    ledger = queue.service.ledger
    ledger.configure_pool("default", worker_size=Resources(2000, 4096, 1))
    run_to_the_end(queue)
    assert ledger.allocation(queue.a).resources == Resources(2000, 4096, 1)
    usage = queue.usage()
    assert figures(usage["A"]) == {
        "cpu_core_seconds": 120.0,
        "memory_mb_seconds": 4096 * 60.0,
        "worker_seconds": 60.0,
        "mcp_server_seconds": 0.0,
    }
    assert figures(usage["holder"]) == held(600)  # reserved at the old size
    assert queue.store_usage() == usage
    report = audit.verify(queue.service)
    assert report.clean, report.as_dict()


def test_a_lease_that_ran_out_before_the_window_bills_nothing_in_it(
    usage_settings: Settings, open_services: OpenService, manual_clock: ManualClock
) -> None:
    """A 60 s lease, not swept: asked from the moment it ran out, usage has no
    row for it, in every store alike (found by the usage property test: the
    SQL stores gave a row of zeros, the in-memory store none)."""
    service = open_services(usage_settings)
    start = manual_clock.now()
    service.ledger.request(AllocationRequest("job-0", (), 1, ttl_seconds=60))
    manual_clock.advance(120)
    window = UsageQuery(since=start + timedelta(seconds=60))
    assert audit.usage(service, window, manual_clock.now()) == []
    service.read_models.catch_up()
    assert service.store.usage(window, manual_clock.now()) == []
    whole = audit.usage(service, UsageQuery(), manual_clock.now())
    assert [figures(r.as_dict()) for r in whole] == [held(60)]
