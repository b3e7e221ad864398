"""Usage as a property: on any history, each allocation's billed usage is the
time its capacity was reserved, and the in-memory and SQLite stores agree.

The reference is worked out from each allocation's own events, not from the
read models: reserved from its Requested (unless a Queued or Rejected follows)
or its Granted, to its Released, Preempted or Failed, or its lease's end when
Expired; a live one to now or its lease's end if sooner.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import LedgerError
from allocation_ledger.domain.values import AllocationRequest, Resources
from allocation_ledger.projections.usage import UsageQuery

POOL = Resources(3000, 6144, 3)

requests = st.tuples(
    st.just("request"),
    st.integers(1, 2),  # workers
    st.booleans(),  # wait
    st.none() | st.integers(30, 600),  # max_wait_seconds
    st.integers(60, 600),  # ttl_seconds
)
operations = st.lists(
    st.one_of(
        requests,
        requests,  # twice as likely: a full pool, and requests waiting
        st.tuples(st.just("release"), st.integers(0, 20)),
        st.tuples(st.just("renew"), st.integers(0, 20)),
        st.tuples(st.just("advance"), st.integers(1, 400)),
        st.tuples(st.just("sweep")),
    ),
    max_size=25,
)


@dataclass
class Twin:
    """The same commands on an in-memory and a SQLite ledger, in lockstep."""

    services: list[AllocationService]
    clocks: list[ManualClock]
    ids: list[str]

    def each(self, command: str, *args: Any, **options: Any) -> list[object]:
        """Run a Ledger command on both; what each answered (or raised)."""
        told: list[object] = []
        for service in self.services:
            try:
                told.append(getattr(service.ledger, command)(*args, **options))
            except LedgerError as error:
                told.append(type(error))
        return told

    def advance(self, seconds: int) -> None:
        for clock in self.clocks:
            clock.advance(seconds)


def sequential_ids() -> Callable[[], str]:
    """alloc-000000000001, -2, ...: the same ids on both ledgers."""
    counter = itertools.count(1)
    return lambda: f"alloc-{next(counter):012x}"


@contextmanager
def twin() -> Iterator[Twin]:
    with tempfile.TemporaryDirectory() as directory:
        clocks = [ManualClock(), ManualClock()]
        services = []
        for store, clock in zip(("memory", "sqlite"), clocks, strict=True):
            services.append(
                open_service(
                    Settings(store=store, database=Path(directory) / "ledger.db"),
                    clock=clock,
                    new_allocation_id=sequential_ids(),
                )
            )
        try:
            for service in services:
                service.ledger.set_capacity(POOL)
            yield Twin(services, clocks, [])
        finally:
            for service in services:
                service.close()


def reserved_seconds(events: list[Allocation.Event], now: datetime) -> float:
    """How long an allocation's capacity was reserved, from its events alone."""
    start: datetime | None = None
    end: datetime | None = None
    expires_at: datetime | None = None
    for event, following in itertools.zip_longest(events, events[1:]):
        if isinstance(event, Allocation.Requested):
            queued_or_refused = isinstance(
                following, Allocation.Queued | Allocation.Rejected
            )
            start = None if queued_or_refused else event.timestamp
            expires_at = event.expires_at
        elif isinstance(event, Allocation.Granted):
            start, expires_at = event.timestamp, event.expires_at
        elif isinstance(event, Allocation.Activated | Allocation.Renewed):
            expires_at = event.expires_at
        elif isinstance(event, Allocation.Expired):
            end = event.expires_at
        elif isinstance(
            event, Allocation.Released | Allocation.Preempted | Allocation.Failed
        ):
            end = event.timestamp
    if start is None:
        return 0.0
    if end is None:
        end = now if expires_at is None else min(now, expires_at)
    return max((end - start).total_seconds(), 0.0)


@settings(max_examples=max(10, settings().max_examples // 5))
@given(operations)
# A live allocation whose lease ended before the window (never swept): it
# held nothing in the window, so no store shows a row for it.
@example(steps=[("request", 1, False, None, 60), ("advance", 113)])
def test_billed_usage_is_reserved_time_and_every_store_agrees(
    steps: list[tuple[Any, ...]],
) -> None:
    with twin() as both:
        for number, step in enumerate(steps):
            if step[0] == "request":
                _, workers, wait, max_wait, ttl = step
                made = both.each(
                    "request",
                    AllocationRequest(f"job-{number}", (), workers, ttl_seconds=ttl),
                    wait=wait,
                    max_wait_seconds=max_wait if wait else None,
                )
                both.ids.append(made[0].allocation.allocation_id)  # type: ignore[attr-defined]
            elif step[0] in ("release", "renew") and both.ids:
                both.each(step[0], both.ids[step[1] % len(both.ids)])
            elif step[0] == "advance":
                both.advance(step[1])
            elif step[0] == "sweep":
                both.each("expire_due")
        both.advance(7)
        memory, sqlite = both.services
        now = both.clocks[0].now()
        start = now - timedelta(
            seconds=sum(s[1] for s in steps if s[0] == "advance") + 7
        )
        middle = start + (now - start) / 2
        for query in (
            UsageQuery(),
            UsageQuery(since=middle),
            UsageQuery(until=middle),
            UsageQuery(since=start + (middle - start) / 2, until=middle),
        ):
            told = [
                [r.as_dict() for r in audit.usage(s, query, now)] for s in both.services
            ]
            assert told[0] == told[1], query

        rows = {r.job_id: r for r in audit.usage(sqlite, UsageQuery(), now)}
        store = memory.ledger.repository.event_store
        for allocation_id in both.ids:
            events = [
                e
                for e in store.get(allocation_uuid(allocation_id))
                if isinstance(e, Allocation.Event)
            ]
            requested = events[0]
            assert isinstance(requested, Allocation.Requested)
            workers = requested.request["workers"]
            row = rows[requested.request["job_id"]]
            assert row.worker_seconds == workers * reserved_seconds(events, now)
            assert row.cpu_core_seconds == row.worker_seconds  # 1 core a worker
