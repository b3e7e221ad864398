"""What scheduling promises, each as the input that once broke it.

- A queued request that can never be granted does not block the queue: it
  fails at once (`exceeds_pool`, or `quota_exceeded` when bigger than its
  tenant's quota) in whatever unit of work changed the pool, and the queue is
  served in the same transaction (docs/scheduling.md, "The queue").
- Nothing is granted and preempted in the same decision: a newcomer competes
  with the queue in one ranking for what expiring due leases freed, and only
  allocations live before the decision are preempted.
- A retry is the same request, or it is refused, naming each argument that
  differs (docs/tools.md, "Retries"); another tenant's request with the same
  request id is another request.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest

from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import (
    allocation_id_for_request,
    allocation_uuid,
    pre_tenant_allocation_id,
)
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import ArgumentChange, RequestIdConflictError
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
WORKERS_2 = Resources(4000, 8192, 2)  # set_capacity(workers=2): the rest kept


def ask(
    ledger: Ledger,
    job: str,
    workers: int,
    priority: Priority = Priority.NORMAL,
    *,
    ttl_seconds: int = 3600,
    **options: Any,
) -> str:
    result = ledger.request(
        AllocationRequest(job, (), workers, priority=priority, ttl_seconds=ttl_seconds),
        **options,
    )
    return result.allocation.allocation_id


def state(ledger: Ledger, allocation_id: str) -> AllocationState:
    return ledger.allocation(allocation_id).state


def reason(ledger: Ledger, allocation_id: str) -> dict[str, Any] | None:
    rejection = ledger.allocation(allocation_id).rejection
    return None if rejection is None else rejection.as_dict()


@contextmanager
def transactions(ledger: Ledger) -> Iterator[list[list[tuple[str, str]]]]:
    """Each transaction written meanwhile, as (event, whose) for each of its
    events: the allocation id it concerns, or the pool's name."""
    recorder = ledger.recorder
    real_insert = recorder.insert_events
    written: list[list[tuple[str, str]]] = []
    owners: dict[Any, str] = {}

    def whose(event: Any) -> str:
        if not isinstance(event, Allocation.Event):
            return str(getattr(event, "allocation_id", None) or "pool")
        if isinstance(event, Allocation.Requested):
            owners[event.originator_id] = event.allocation_id
        if event.originator_id not in owners:
            first = ledger.repository.event_store.get(event.originator_id, lte=1)
            [requested] = list(first)
            assert isinstance(requested, Allocation.Requested)
            owners[event.originator_id] = requested.allocation_id
        return owners[event.originator_id]

    def spy(stored_events: Sequence[Any], **kwargs: Any) -> Any:
        events = [ledger.mapper.to_domain_event(stored) for stored in stored_events]
        written.append([(type(event).__name__, whose(event)) for event in events])
        return real_insert(stored_events, **kwargs)

    recorder.insert_events = spy  # type: ignore[method-assign]
    try:
        yield written
    finally:
        recorder.insert_events = real_insert  # type: ignore[method-assign]


def history(service: AllocationService, allocation_id: str) -> list[tuple[str, Any]]:
    return [(h.event, h.at) for h in audit.allocation_history(service, allocation_id)]


@pytest.fixture
def ledger(ledger_service: AllocationService) -> Ledger:
    """A ledger on a pool of 4 workers (1 core, 2048 MB each), strict policy."""
    ledger_service.ledger.set_capacity(WORKERS_4)
    return ledger_service.ledger


# -- 1. a queued request that can never be granted does not block the queue ---------


def test_a_queued_request_bigger_than_the_shrunk_pool_fails_and_the_queue_moves_on(
    ledger: Ledger,
) -> None:
    holder = ask(ledger, "holder", 4)
    big = ask(ledger, "big", 4, wait=True)
    small = ask(ledger, "small", 1, wait=True)
    assert state(ledger, big) is state(ledger, small) is AllocationState.QUEUED

    with transactions(ledger) as written:
        ledger.set_capacity(WORKERS_2)
    # At once, in the transaction that shrank the pool.
    [shrink] = written
    assert ("CapacityChanged", "pool") in shrink
    assert ("Rejected", big) in shrink
    assert ("Dequeued", big) in shrink
    assert state(ledger, big) is AllocationState.FAILED
    assert reason(ledger, big) == {
        "code": "exceeds_pool",
        "dimension": "workers",
        "requested": 4,
        "available": 2,
    }
    # The holder still holds 4 of 2: lowering capacity evicts nobody.
    assert state(ledger, small) is AllocationState.QUEUED
    assert list(ledger.pool("default").queue) == [small]

    with transactions(ledger) as written:
        ledger.release(holder)
    [release] = written
    assert ("Released", holder) in release
    assert ("Granted", small) in release
    assert state(ledger, small) is AllocationState.ACTIVE
    assert ledger.pool("default").queue == {}
    # Nothing is left at the head to hold a newcomer back (was queued_ahead).
    newcomer = ask(ledger, "newcomer", 1, Priority.HIGH)
    assert state(ledger, newcomer) is AllocationState.ACTIVE


def test_a_queued_request_over_its_lowered_quota_fails_and_the_queue_moves_on(
    ledger: Ledger,
) -> None:
    ask(ledger, "holder", 3)
    team_a = ask(ledger, "a", 3, tenant="team-a", wait=True)
    team_b = ask(ledger, "b", 1, tenant="team-b", wait=True)  # behind it (strict)
    assert state(ledger, team_b) is AllocationState.QUEUED

    with transactions(ledger) as written:
        ledger.set_quota("team-a", Resources(2000, 4096, 2))
    [quota] = written
    assert ("Rejected", team_a) in quota
    assert ("Granted", team_b) in quota  # the queue moved on, in the same one
    assert state(ledger, team_a) is AllocationState.FAILED
    assert reason(ledger, team_a) == {
        "code": "quota_exceeded",
        "dimension": "workers",
        "requested": 3,
        "available": 2,  # the quota's limit: it would not fit even holding nothing
    }
    assert state(ledger, team_b) is AllocationState.ACTIVE
    assert ledger.pool("default").queue == {}


def test_a_queued_request_whose_quota_is_only_used_up_now_keeps_waiting(
    ledger: Ledger,
) -> None:
    own = ask(ledger, "a-holder", 2, tenant="team-a")
    other = ask(ledger, "b-holder", 2, tenant="team-b")
    waiting = ask(ledger, "a-waits", 2, tenant="team-a", wait=True)
    ledger.set_quota("team-a", Resources(3000, 6144, 3))
    # 2 held + 2 > 3 now, but 2 <= 3: it can be granted once team-a holds less.
    assert state(ledger, waiting) is AllocationState.QUEUED
    ledger.release(other)
    assert state(ledger, waiting) is AllocationState.QUEUED  # room, not quota
    ledger.release(own)
    assert state(ledger, waiting) is AllocationState.ACTIVE


def test_a_queued_request_that_bigger_workers_no_longer_fit_fails(
    ledger: Ledger,
) -> None:
    ask(ledger, "holder", 4)
    waiting = ask(ledger, "waits", 3, wait=True)
    ledger.configure_pool("default", worker_size=Resources(2000, 2048, 1))
    # 3 workers of 2 cores each: 6 cores, and the pool has 4 in all.
    assert state(ledger, waiting) is AllocationState.FAILED
    assert reason(ledger, waiting) == {
        "code": "exceeds_pool",
        "dimension": "cpu",
        "requested": 6000,
        "available": 4000,
    }


def test_a_scheduling_change_serves_the_queue_in_its_transaction(
    ledger: Ledger,
) -> None:
    holder = ask(ledger, "holder", 3)
    head = ask(ledger, "big", 3, wait=True)
    small = ask(ledger, "small", 1, wait=True)
    assert state(ledger, small) is AllocationState.QUEUED  # strict
    with transactions(ledger) as written:
        ledger.configure_scheduling(Scheduling(queue_policy=QueuePolicy.BACKFILL))
    [change] = written
    assert ("Granted", small) in change
    assert state(ledger, small) is AllocationState.ACTIVE
    assert state(ledger, head) is AllocationState.QUEUED
    ledger.release(holder)
    assert state(ledger, head) is AllocationState.ACTIVE


def test_a_request_bigger_than_the_pool_that_would_wait_is_refused_exceeds_pool(
    ledger: Ledger,
) -> None:
    ask(ledger, "holder", 1)
    waits = ask(ledger, "waits", 5, wait=True)
    assert reason(ledger, waits) == {
        "code": "exceeds_pool",
        "dimension": "workers",
        "requested": 5,
        "available": 4,
    }
    # Without wait: the original refusal, what is free now.
    refused = ask(ledger, "refused", 5)
    assert reason(ledger, refused) == {
        "code": "insufficient_capacity",
        "dimension": "workers",
        "requested": 5,
        "available": 3,
    }


# -- 2. nothing is granted and preempted in the same decision ----------------------


def test_room_freed_by_expiry_goes_by_rank_to_the_newcomer_and_the_queue(
    ledger_service: AllocationService, ledger: Ledger, manual_clock: ManualClock
) -> None:
    x = ask(ledger, "x", 4, ttl_seconds=60)
    q1 = ask(ledger, "q1", 2, wait=True)
    q2 = ask(ledger, "q2", 2, wait=True)
    manual_clock.advance(61)  # no sweep in between

    with transactions(ledger) as written:
        urgent = ledger.request(
            AllocationRequest("urgent", (), 2, priority=Priority.CRITICAL)
        )
    assert len(written) == 1
    assert urgent.expired_first == (x,)
    assert urgent.preempted == ()
    assert urgent.allocation.state is AllocationState.ACTIVE
    assert state(ledger, x) is AllocationState.EXPIRED
    assert state(ledger, q1) is AllocationState.ACTIVE  # the older one
    assert state(ledger, q2) is AllocationState.QUEUED
    assert list(ledger.pool("default").queue) == [q2]
    for allocation_id in (x, q1, q2, urgent.allocation.allocation_id):
        events = [event for event, _ in history(ledger_service, allocation_id)]
        assert "Preempted" not in events
    assert [e for e, _ in history(ledger_service, q1)] == [
        "Requested",
        "Queued",
        "Granted",
        "Activated",
    ]
    report = audit.verify(ledger_service)
    assert report.clean, report.as_dict()


def test_a_newcomer_ranking_above_the_queue_takes_the_room_expiry_freed_first(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    ask(ledger, "x", 4, ttl_seconds=60)
    low = ask(ledger, "low", 4, Priority.LOW, wait=True, preempt=False)
    manual_clock.advance(61)
    newcomer = ledger.request(AllocationRequest("normal", (), 4))
    # Before, the queue took what expiry freed first and the newcomer (normal,
    # which preempts nobody) was refused: the low request ranks below it.
    assert newcomer.allocation.state is AllocationState.ACTIVE
    assert state(ledger, low) is AllocationState.QUEUED


def test_a_request_granted_from_the_queue_is_never_preempted_in_the_same_decision(
    ledger_service: AllocationService, ledger: Ledger, manual_clock: ManualClock
) -> None:
    ledger.configure_scheduling(Scheduling(aging_seconds=60))
    ask(ledger, "x", 4, ttl_seconds=200)
    aged = ask(ledger, "aged", 2, Priority.LOW, wait=True, preempt=False)
    manual_clock.advance(201)  # low + 3 aging periods: ranks critical
    urgent = ledger.request(
        AllocationRequest("urgent", (), 4, priority=Priority.CRITICAL), wait=True
    )
    # The aged request arrived first at the same rank: it gets the room, and
    # the newcomer may not take it back in the same decision (it could later).
    assert state(ledger, aged) is AllocationState.ACTIVE
    assert urgent.preempted == ()
    assert urgent.allocation.state is AllocationState.QUEUED
    assert [e for e, _ in history(ledger_service, aged)] == [
        "Requested",
        "Queued",
        "Granted",
        "Activated",
    ]
    # A later decision may preempt it: it is live from before that one.
    manual_clock.advance(1)
    ledger.release(urgent.allocation.allocation_id)  # cancel the queued one
    later = ledger.request(
        AllocationRequest("later", (), 4, priority=Priority.CRITICAL)
    )
    assert later.preempted == (aged,)


# -- 5. a retry is the same request, or it is refused -----------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"wait": True}, [ArgumentChange("wait", False, True)]),
        (
            {"wait": True, "max_wait_seconds": 600},
            [
                ArgumentChange("wait", False, True),
                ArgumentChange("max_wait_seconds", None, 600),
            ],
        ),
        ({"preempt": False}, [ArgumentChange("preempt", True, False)]),
        ({"dry_run": True}, [ArgumentChange("dry_run", False, True)]),
        (
            {"wait": True, "preempt": False, "dry_run": True},
            [
                ArgumentChange("wait", False, True),
                ArgumentChange("preempt", True, False),
                ArgumentChange("dry_run", False, True),
            ],
        ),
    ],
)
def test_a_retry_with_other_arguments_is_refused_naming_them(
    ledger: Ledger, changes: dict[str, Any], expected: list[ArgumentChange]
) -> None:
    first = ledger.request(
        AllocationRequest("job", (), 1), request_id="r-1", tenant="team-a"
    )
    position = last_position(ledger)
    arguments: dict[str, Any] = {"request_id": "r-1", "tenant": "team-a", **changes}
    with pytest.raises(RequestIdConflictError) as raised:
        ledger.request(AllocationRequest("job", (), 1), **arguments)
    error = raised.value
    assert error.request_id == "r-1"
    assert error.allocation_id == first.allocation.allocation_id
    assert error.changes == expected
    assert error.differing == [c.argument for c in expected]
    for change in expected:
        assert change.argument in str(error)
    assert last_position(ledger) == position  # nothing written
    again = ledger.request(
        AllocationRequest("job", (), 1), request_id="r-1", tenant="team-a"
    )
    assert again.replayed
    assert again.allocation.allocation_id == first.allocation.allocation_id


def test_a_retry_of_a_queued_request_repeats_its_wait(ledger: Ledger) -> None:
    ask(ledger, "holder", 4)
    options: dict[str, Any] = {"wait": True, "max_wait_seconds": 600}
    first = ledger.request(AllocationRequest("job", (), 1), request_id="q", **options)
    assert first.allocation.state is AllocationState.QUEUED
    again = ledger.request(AllocationRequest("job", (), 1), request_id="q", **options)
    assert again.replayed
    with pytest.raises(RequestIdConflictError) as raised:
        ledger.request(AllocationRequest("job", (), 1), request_id="q", wait=True)
    assert raised.value.changes == [ArgumentChange("max_wait_seconds", 600, None)]


def test_a_real_request_after_a_dry_run_with_its_request_id_is_a_new_request(
    ledger: Ledger,
) -> None:
    before = last_position(ledger)
    trial = ledger.request(
        AllocationRequest("job", (), 1), request_id="r-2", dry_run=True
    )
    assert trial.dry_run
    assert last_position(ledger) == before
    real = ledger.request(AllocationRequest("job", (), 1), request_id="r-2", wait=True)
    assert not real.replayed  # the dry run recorded nothing to retry
    assert real.allocation.state is AllocationState.ACTIVE
    assert real.allocation.allocation_id == allocation_id_for_request("default", "r-2")


def test_a_request_recorded_before_its_options_were_kept_is_compared_on_the_rest(
    ledger: Ledger,
) -> None:
    # Requested as stored before `options` existed: the event has none (and
    # its id is derived as then, from the pool and request id alone).
    allocation_id = pre_tenant_allocation_id("default", "old")
    request = AllocationRequest("job", (), 1)
    legacy = Allocation._create(
        Allocation.Requested,
        id=allocation_uuid(allocation_id),
        timestamp=ledger.clock.now(),
        actor="local",
        allocation_id=allocation_id,
        pool="default",
        request=request.as_dict(),
        request_id="old",
        resources=Resources(1000, 2048, 1).as_dict(),
        worker_ports=[],
        servers=[],
        expires_at=None,
    )
    legacy.trigger_event(
        Allocation.Rejected,
        timestamp=ledger.clock.now(),
        actor="local",
        reason={
            "code": "insufficient_capacity",
            "dimension": "workers",
            "requested": 1,
            "available": 0,
        },
    )
    ledger.save(legacy)
    assert ledger.allocation(allocation_id).options is None
    # What was not recorded is not compared; what was, is.
    again = ledger.request(request, request_id="old", wait=True, preempt=False)
    assert again.replayed
    with pytest.raises(RequestIdConflictError) as raised:
        ledger.request(AllocationRequest("job", (), 2), request_id="old")
    assert raised.value.differing == ["workers"]
    # The request id is its tenant's (none): another tenant's is another request.
    other = ledger.request(request, request_id="old", tenant="team-a")
    assert not other.replayed
    assert other.allocation.allocation_id != allocation_id
