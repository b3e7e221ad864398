"""Group commit: concurrent commands recorded together, each answered only
once its batch is durable; a batch that loses a race is decided again; one
command's failure never fails its neighbours (domain/group_commit.py)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
)
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import PoolNotFoundError
from allocation_ledger.domain.observer import LedgerObserver
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Resources,
)
from tests.ledger_support import OpenService, lined_up, stored_events
from tests.postgres import postgres_schema, postgres_settings, require_postgres

__all__ = ["postgres_schema"]  # a fixture


class Batches(LedgerObserver):
    """Counts the batches a ledger records: (commands, ok) -> how many."""

    def __init__(self) -> None:
        self.seen: Counter[tuple[int, bool]] = Counter()
        self._lock = threading.Lock()

    def batch_recorded(self, commands: int, events: int, *, ok: bool) -> None:
        with self._lock:
            self.seen[(commands, ok)] += 1

    def largest(self, *, ok: bool = True) -> int:
        return max((n for (n, good) in self.seen if good is ok), default=0)


def _stores() -> list[Any]:
    return ["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=_stores())
def store_service(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    open_services: OpenService,
) -> Iterator[AllocationService]:
    store = request.param
    if store == "memory":
        yield open_services(Settings(store="memory"))
    elif store == "sqlite":
        yield open_services(Settings(store="sqlite", database=tmp_path / "l.db"))
    else:
        require_postgres()
        schema = request.getfixturevalue("postgres_schema")
        settings = postgres_settings(schema)
        init_database(settings)
        yield open_services(settings)


def test_commands_lined_up_are_recorded_in_one_batch_and_each_told_its_position(
    store_service: AllocationService,
) -> None:
    ledger = store_service.ledger
    ledger.set_capacity(Resources(64_000, 131_072, 16))
    batches = Batches()
    ledger.observer = batches
    before = ledger.recorder.max_notification_id() or 0
    requests = [
        partial(ledger.request, AllocationRequest(f"job-{n}", (), 1)) for n in range(8)
    ]
    with lined_up(ledger, requests) as answers:
        pass
    assert batches.seen == Counter({(8, True): 1})
    events = {e.position: e for e in stored_events(ledger, before)}
    positions = []
    for answer in answers:
        assert answer.allocation.state is AllocationState.ACTIVE
        # Its position is where its own last event is in the log.
        assert answer.position in events
        assert events[answer.position].event.originator_id in {
            ledger.allocation(answer.allocation.allocation_id).id,
            ledger.pool("default").id,
        }
        positions.append(answer.position)
    assert len(set(positions)) == 8
    # Each decision saw the ones before it: eight distinct workers' worth.
    assert ledger.pool("default").reserved.workers == 8
    assert audit.verify(store_service).clean


def test_the_last_fitting_request_of_a_batch_is_granted_and_the_rest_refused(
    store_service: AllocationService,
) -> None:
    """Decisions in one batch see each other: ten requests of one worker
    each for a pool of four leave exactly four active, six refused for
    workers (none granted twice the same capacity)."""
    ledger = store_service.ledger
    ledger.set_capacity(Resources(64_000, 131_072, 4))
    requests = [
        partial(ledger.request, AllocationRequest(f"job-{n}", (), 1)) for n in range(10)
    ]
    with lined_up(ledger, requests) as answers:
        states = Counter(a.allocation.state for a in answers)
    assert states == Counter({AllocationState.ACTIVE: 4, AllocationState.FAILED: 6})
    assert ledger.pool("default").reserved.workers == 4
    assert audit.verify(store_service).clean


def test_a_refusal_in_a_batch_never_fails_its_neighbours(
    store_service: AllocationService,
) -> None:
    ledger = store_service.ledger
    batches = Batches()
    ledger.observer = batches
    commands: list[Callable[[], Any]] = [
        lambda: ledger.request(AllocationRequest("job-a", (), 1)),
        lambda: ledger.request(AllocationRequest("job-x", (), 1), pool="nowhere"),
        lambda: ledger.request(AllocationRequest("job-b", (), 1)),
        lambda: ledger.request(AllocationRequest("job-c", (), 1)),
    ]
    with lined_up(ledger, commands) as answers:
        first, refused, *others = answers
    assert isinstance(refused, PoolNotFoundError)
    for answer in [first, *others]:
        assert answer.allocation.state is AllocationState.ACTIVE
        assert answer.position is not None
    assert ledger.pool("default").reserved.workers == 3
    assert not [k for k in batches.seen if not k[1]]
    assert audit.verify(store_service).clean


@pytest.fixture
def servers_on_one_file(
    tmp_path: Path, open_services: OpenService
) -> tuple[AllocationService, AllocationService]:
    """Two servers on one SQLite file (on one clock)."""
    settings = Settings(store="sqlite", database=tmp_path / "shared.db")
    clock = ManualClock()
    return (
        open_services(settings, clock=clock),
        open_services(settings, clock=clock),
    )


def test_a_batch_that_lost_a_race_to_another_server_is_decided_again(
    servers_on_one_file: tuple[AllocationService, AllocationService],
) -> None:
    """Two servers on one SQLite file: the second writes to the pool after
    the first cached it, so the first's batch of four fails on the pool's
    version; all four are decided again on fresh reads and granted, nothing
    written twice."""
    first, second = servers_on_one_file
    first.ledger.set_capacity(Resources(64_000, 131_072, 16))
    first.ledger.request(AllocationRequest("warm", (), 1))  # pool cached
    second.ledger.request(AllocationRequest("other", (), 2))
    batches = Batches()
    first.ledger.observer = batches
    requests = [
        partial(first.ledger.request, AllocationRequest(f"job-{n}", (), 1))
        for n in range(4)
    ]
    with lined_up(first.ledger, requests) as answers:
        pass
    assert batches.seen[(4, False)] == 1
    assert first.ledger.conflicts >= 4
    assert all(a.allocation.state is AllocationState.ACTIVE for a in answers)
    pool = first.ledger.pool("default")
    assert pool.reserved.workers == 1 + 2 + 4
    assert len(pool.reservations) == 6
    jobs = [r.event for r in stored_events(first.ledger)]
    requested = [e for e in jobs if type(e).__name__ == "Requested"]
    assert len(requested) == 6  # warm, other and the four: none twice
    assert audit.verify(first).clean


def test_a_command_that_read_a_failed_batch_is_not_answered_from_it(
    servers_on_one_file: tuple[AllocationService, AllocationService],
) -> None:
    """A release that read the pool as a failing batch left it is decided
    again: its answer rests only on what was recorded."""
    first, second = servers_on_one_file
    first.ledger.set_capacity(Resources(64_000, 131_072, 2))
    held = first.ledger.request(AllocationRequest("held", (), 1))
    second.ledger.request(AllocationRequest("other", (), 1))  # pool full now
    commands: list[Callable[[], Any]] = [
        # Decided on the stale cache: fits (the first server thinks one
        # worker is free); its batch then fails on the pool's version.
        lambda: first.ledger.request(AllocationRequest("late", (), 1)),
        lambda: first.ledger.release(held.allocation.allocation_id),
    ]
    with lined_up(first.ledger, commands) as (late, released):
        pass
    assert released.result.status == "released"
    # Decided again on fresh reads: "late" fits only once "held" is
    # released, and the order of the retries decides which comes first.
    pool = first.ledger.pool("default")
    assert pool.reserved.workers == (
        2 if late.allocation.state is AllocationState.ACTIVE else 1
    )
    assert audit.verify(first).clean


def test_without_group_commit_each_command_is_its_own_transaction(
    open_services: OpenService, tmp_path: Path
) -> None:
    service = open_services(Settings(store="sqlite", database=tmp_path / "l.db"))
    ledger = service.ledger
    ledger.group_commit = False
    batches = Batches()
    ledger.observer = batches
    requests = [
        partial(ledger.request, AllocationRequest(f"job-{n}", (), 1)) for n in range(4)
    ]
    with lined_up(ledger, requests) as answers:
        assert all(a.allocation.state is AllocationState.ACTIVE for a in answers)
    assert not batches.seen
    assert sorted(a.position for a in answers) == sorted(
        set(a.position for a in answers)
    )


class CountingWriterLock:
    """A writers' lock for one process: counts takes and releases."""

    def __init__(self) -> None:
        self.held = False
        self.takes = 0

    def acquire(self, timeout: float | None) -> bool:
        assert not self.held, "taken twice"
        self.held = True
        self.takes += 1
        return True

    def release(self) -> None:
        assert self.held
        self.held = False


def test_a_command_run_inside_another_is_recorded_at_once_under_the_same_hold(
    open_services: OpenService,
) -> None:
    """A command run from inside another's body records its batch itself
    (nobody else can while the lock is held), and the writers' lock stays
    held until the outer command is done."""
    ledger = open_services(Settings(store="memory")).ledger
    lock = CountingWriterLock()
    ledger.writer_lock = lock
    batches = Batches()
    ledger.observer = batches
    seen: list[bool] = []

    def outer(work: Any) -> Any:
        inner = ledger.request(AllocationRequest("inner", (), 1))
        seen.append(lock.held)
        return inner

    made = ledger._run("outer", outer)
    assert made.allocation.state is AllocationState.ACTIVE
    assert made.position is not None
    assert seen == [True]  # still held for the outer command
    assert not lock.held and lock.takes == 1
    assert batches.seen == Counter({(1, True): 1})
