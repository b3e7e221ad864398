"""Priority scheduling: queueing, grants, aging, preemption and quotas."""

from __future__ import annotations

import pytest

from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Priority,
    QueuePolicy,
    Resources,
)
from tests.ledger_support import last_position

WORKERS_4 = Resources(4000, 8192, 4)


def ask(
    ledger: Ledger,
    job: str,
    workers: int,
    priority: Priority = Priority.NORMAL,
    **options: object,
) -> str:
    result = ledger.request(
        AllocationRequest(job, (), workers, priority=priority),
        **options,  # type: ignore[arg-type]
    )
    return result.allocation.allocation_id


def state(service: AllocationService, allocation_id: str) -> str:
    return service.read_models.allocation(allocation_id).state


@pytest.fixture
def small(ledger_service: AllocationService) -> AllocationService:
    ledger_service.ledger.set_capacity(WORKERS_4)
    return ledger_service


def test_a_request_that_waits_holds_nothing_until_room_frees(
    small: AllocationService,
) -> None:
    ledger = small.ledger
    first = ask(ledger, "a", 3)
    waiting = ask(ledger, "b", 2, wait=True)
    assert state(small, waiting) == "queued"
    view = small.read_models.allocation(waiting)
    assert view.waiting_for is not None
    assert view.waiting_for["dimension"] == "workers"
    capacity = small.read_models.capacity()
    assert capacity is not None
    assert capacity.reserved.workers == 3  # the queued one holds nothing
    assert list(capacity.queue) == [waiting]

    released = ledger.release(first)
    assert released.result.status == "released"
    # Granted in the same transaction as the release that made room.
    assert state(small, waiting) == "active"
    history = audit.allocation_history(small, waiting)
    assert [h.event for h in history] == ["Requested", "Queued", "Granted", "Activated"]
    assert history[2].actor == "system:scheduler"
    assert history[2].at == history[3].at
    capacity = small.read_models.capacity()
    assert capacity is not None
    assert capacity.queue == {}
    assert capacity.reserved.workers == 2


def test_without_wait_a_request_that_does_not_fit_is_refused(
    small: AllocationService,
) -> None:
    ask(small.ledger, "a", 3)
    refused = small.ledger.request(AllocationRequest("b", (), 2))
    assert refused.allocation.state is AllocationState.FAILED
    assert refused.allocation.rejection is not None
    assert refused.allocation.rejection.code == "insufficient_capacity"


def test_a_request_bigger_than_the_pool_is_refused_not_queued_forever(
    small: AllocationService,
) -> None:
    result = small.ledger.request(AllocationRequest("huge", (), 5), wait=True)
    assert result.allocation.state is AllocationState.FAILED


def test_a_queued_request_times_out_after_its_maximum_wait(
    small: AllocationService, manual_clock: ManualClock
) -> None:
    ask(small.ledger, "a", 4)
    waiting = ask(small.ledger, "b", 1, wait=True, max_wait_seconds=120)
    manual_clock.advance(119)
    small.ledger.expire_due()
    assert state(small, waiting) == "queued"
    manual_clock.advance(1)
    small.ledger.expire_due()
    view = small.read_models.allocation(waiting)
    assert view.state == "failed"
    assert view.rejection is not None
    assert view.rejection["code"] == "queue_timeout"
    capacity = small.read_models.capacity()
    assert capacity is not None
    assert capacity.queue == {}


def test_releasing_a_queued_request_cancels_it(small: AllocationService) -> None:
    ask(small.ledger, "a", 4)
    waiting = ask(small.ledger, "b", 1, wait=True)
    outcome = small.ledger.release(waiting)
    assert outcome.result.status == "released"
    assert outcome.result.freed == Resources()
    assert state(small, waiting) == "released"
    capacity = small.read_models.capacity()
    assert capacity is not None
    assert capacity.queue == {}


def test_the_queue_is_served_by_priority_then_arrival(small: AllocationService) -> None:
    ledger = small.ledger
    holder = ask(ledger, "holder", 4)
    low = ask(ledger, "low", 2, Priority.LOW, wait=True, preempt=False)
    normal_1 = ask(ledger, "normal-1", 2, wait=True)
    high = ask(ledger, "high", 2, Priority.HIGH, wait=True, preempt=False)
    normal_2 = ask(ledger, "normal-2", 2, wait=True)
    ledger.release(holder)
    granted = {
        a for a in (low, normal_1, high, normal_2) if state(small, a) == "active"
    }
    assert granted == {high, normal_1}


def test_under_strict_order_a_newcomer_does_not_pass_the_head(
    small: AllocationService,
) -> None:
    ledger = small.ledger
    ask(ledger, "a", 3)
    head = ask(ledger, "big", 3, wait=True)
    # One worker is free and a one-worker request would fit, but the head of
    # the queue waits for room first.
    newcomer = ledger.request(AllocationRequest("small", (), 1))
    assert newcomer.allocation.state is AllocationState.FAILED
    assert newcomer.allocation.rejection is not None
    assert newcomer.allocation.rejection.code == "queued_ahead"
    queued = ask(ledger, "small-waits", 1, wait=True)
    assert state(small, queued) == "queued"
    assert state(small, head) == "queued"


def test_under_strict_order_a_request_that_takes_nothing_passes(
    small: AllocationService,
) -> None:
    """It cannot delay the head: refused, it read "requested 0, available 0
    after them". One naming a server already running shares it, so it takes
    nothing either; one that would start a server takes a port and waits."""
    ledger = small.ledger
    ledger.request(AllocationRequest("uses-github", ("github",), 3))
    head = ask(ledger, "big", 3, wait=True)
    for job, servers in (("nothing", ()), ("shares-github", ("github",))):
        answer = ledger.request(AllocationRequest(job, servers, 0))
        assert answer.allocation.state is AllocationState.ACTIVE, job
    starts = ledger.request(AllocationRequest("starts-fs", ("filesystem",), 0))
    assert starts.allocation.rejection is not None
    assert starts.allocation.rejection.code == "queued_ahead"
    assert state(small, head) == "queued"


def test_backfill_lets_smaller_requests_through(small: AllocationService) -> None:
    ledger = small.ledger
    ledger.configure_scheduling(Scheduling(queue_policy=QueuePolicy.BACKFILL))
    holder = ask(ledger, "a", 3)
    head = ask(ledger, "big", 3, wait=True)
    newcomer = ask(ledger, "small", 1)
    assert state(small, newcomer) == "active"
    assert state(small, head) == "queued"
    ledger.release(holder)
    assert state(small, head) == "active"


def test_aging_moves_a_long_waiting_request_ahead_of_newer_higher_ones(
    small: AllocationService, manual_clock: ManualClock
) -> None:
    ledger = small.ledger
    ledger.configure_scheduling(Scheduling(aging_seconds=60))
    holder = ask(ledger, "holder", 4)
    old_low = ask(ledger, "old-low", 4, Priority.LOW, wait=True, preempt=False)
    manual_clock.advance(180)  # low + 3 periods: counts as critical now
    new_high = ask(ledger, "new-high", 4, Priority.HIGH, wait=True, preempt=False)
    ledger.release(holder)
    assert state(small, old_low) == "active"
    assert state(small, new_high) == "queued"


def test_critical_preempts_the_youngest_lowest_priority_allocations(
    small: AllocationService, manual_clock: ManualClock
) -> None:
    ledger = small.ledger
    normal_old = ask(ledger, "normal-old", 1)
    manual_clock.advance(10)
    low_old = ask(ledger, "low-old", 1, Priority.LOW)
    manual_clock.advance(10)
    low_young = ask(ledger, "low-young", 1, Priority.LOW)
    manual_clock.advance(10)
    high = ask(ledger, "high", 1, Priority.HIGH)

    result = ledger.request(
        AllocationRequest("urgent", (), 1, priority=Priority.CRITICAL)
    )
    assert result.allocation.state is AllocationState.ACTIVE
    assert result.preempted == (low_young,)
    victim = small.read_models.allocation(low_young)
    assert victim.state == "preempted"
    assert victim.preempted_by == result.allocation.allocation_id
    for kept in (normal_old, low_old, high):
        assert state(small, kept) == "active"
    report = audit.verify(small)
    assert report.clean, report.as_dict()


def test_preemption_takes_the_smallest_set(small: AllocationService) -> None:
    ledger = small.ledger
    one = ask(ledger, "one", 1, Priority.LOW)
    three = ask(ledger, "three", 3, Priority.LOW)
    result = ledger.request(
        AllocationRequest("urgent", (), 3, priority=Priority.CRITICAL)
    )
    assert result.preempted == (three,)
    assert state(small, one) == "active"


def test_only_strictly_lower_priorities_allowed_by_the_pool_are_preempted(
    small: AllocationService,
) -> None:
    ledger = small.ledger
    ask(ledger, "normal", 4)
    high = ledger.request(AllocationRequest("high", (), 1, priority=Priority.HIGH))
    assert high.allocation.state is AllocationState.FAILED  # high preempts low only
    assert high.preempted == ()
    critical = ledger.request(
        AllocationRequest("critical", (), 1, priority=Priority.CRITICAL),
        preempt=False,
    )
    assert critical.allocation.state is AllocationState.FAILED


def test_a_dry_run_says_who_would_be_preempted_and_changes_nothing(
    small: AllocationService,
) -> None:
    ledger = small.ledger
    victim = ask(ledger, "low", 4, Priority.LOW)
    before = ledger.recorder.max_notification_id()
    result = ledger.request(
        AllocationRequest("urgent", (), 2, priority=Priority.CRITICAL), dry_run=True
    )
    assert result.dry_run
    assert result.preempted == (victim,)
    assert ledger.recorder.max_notification_id() == before
    assert state(small, victim) == "active"


def test_a_tenant_over_its_quota_is_refused(small: AllocationService) -> None:
    ledger = small.ledger
    ledger.set_quota("team-a", Resources(2000, 4096, 2))
    ask(ledger, "a1", 2, tenant="team-a")
    refused = ledger.request(AllocationRequest("a2", (), 1), tenant="team-a", wait=True)
    assert refused.allocation.state is AllocationState.FAILED
    assert refused.allocation.rejection is not None
    assert refused.allocation.rejection.code == "quota_exceeded"
    assert refused.allocation.rejection.available == 0
    other = ask(ledger, "b1", 2, tenant="team-b")
    assert state(small, other) == "active"
    capacity = small.read_models.capacity()
    assert capacity is not None
    assert capacity.held_by_tenant == {
        "team-a": Resources(2000, 4096, 2),
        "team-b": Resources(2000, 4096, 2),
    }
    ledger.set_quota("team-a", None)
    assert state(small, ask(ledger, "a3", 0, tenant="team-a")) == "active"


def test_scheduling_settings_are_validated(small: AllocationService) -> None:
    with pytest.raises(InvalidRequestError, match="strictly lower"):
        small.ledger.configure_scheduling(Scheduling(preemption={"low": ("high",)}))
    with pytest.raises(InvalidRequestError, match="aging_seconds"):
        small.ledger.configure_scheduling(Scheduling(aging_seconds=0))
    with pytest.raises(InvalidRequestError, match="tenant"):
        small.ledger.set_quota("bad tenant!", None)
    with pytest.raises(InvalidRequestError, match="max_wait_seconds"):
        small.ledger.request(
            AllocationRequest("a", (), 1), wait=True, max_wait_seconds=0
        )


def test_max_wait_seconds_without_wait_is_refused_and_writes_nothing(
    small: AllocationService,
) -> None:
    """It bounds a queued request's wait; without wait nothing is queued, so
    it was accepted, recorded and meant nothing (the caller believed it would
    wait). block_seconds without wait was already refused."""
    ledger = small.ledger
    before = last_position(ledger)
    with pytest.raises(InvalidRequestError, match="needs wait=true") as raised:
        ledger.request(AllocationRequest("a", (), 1), max_wait_seconds=60)
    assert raised.value.field == "max_wait_seconds"
    assert last_position(ledger) == before
    ask(ledger, "holder", 4)
    queued = ledger.request(
        AllocationRequest("a", (), 1), wait=True, max_wait_seconds=60
    )
    assert queued.allocation.state is AllocationState.QUEUED


def test_rebuilt_read_models_keep_the_queue(small: AllocationService) -> None:
    ledger = small.ledger
    ask(ledger, "a", 4)
    ask(ledger, "b", 2, wait=True)
    ask(ledger, "c", 1, Priority.HIGH, wait=True, preempt=False)
    small.read_models.catch_up()
    live = small.read_models.capacity()
    small.projector.rebuild()
    assert small.read_models.capacity() == live
    assert audit.verify(small).clean
