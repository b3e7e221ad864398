"""Admission as one decision: `admit` over a pool's state, with no ledger.

The pool state is built with the Pool aggregate's own commands, as in
tests/test_pool.py; `admit` only reads it. The ledger-level behaviour (events,
dry runs, fresh reads before a refusal) is in tests/test_scheduling.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from allocation_ledger.domain.admission import Admission, Grant, Queue, Refuse, admit
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import (
    EXCEEDS_POOL,
    INSUFFICIENT_CAPACITY,
    QUEUED_AHEAD,
    QUOTA_EXCEEDED,
    AllocationRequest,
    Dimension,
    Priority,
    QueuePolicy,
    Rejection,
    Resources,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
WORKERS_4 = Resources(4_000, 8_192, 4)
LOW, NORMAL, HIGH, CRITICAL = (
    Priority.LOW,
    Priority.NORMAL,
    Priority.HIGH,
    Priority.CRITICAL,
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def small_pool(scheduling: Scheduling | None = None) -> Pool:
    """A pool of 4 workers (1 core, 2048 MB each), default rules unless given."""
    pool = Pool.create(
        "default", PoolSettings(capacity=WORKERS_4), at=T0, actor="local"
    )
    if scheduling is not None:
        pool.configure_scheduling(scheduling, at=T0, actor="local")
    return pool


def ask(workers: int, priority: Priority = NORMAL) -> AllocationRequest:
    return AllocationRequest(
        f"job-{priority}-{workers}", workers=workers, priority=priority
    )


def hold(
    pool: Pool,
    allocation_id: str,
    workers: int,
    priority: Priority = NORMAL,
    *,
    tenant: str | None = None,
    seconds: float = 0,
) -> None:
    """A live allocation holding `workers` workers, reserved at `seconds`."""
    pool.reserve(
        allocation_id,
        ask(workers, priority),
        expires_at=at(seconds + 3600),
        at=at(seconds),
        actor="alice",
        tenant=tenant,
    )


def waiting(
    pool: Pool,
    allocation_id: str,
    workers: int,
    priority: Priority = NORMAL,
    *,
    seconds: float = 0,
) -> None:
    """A queued request for `workers` workers, enqueued at `seconds`."""
    pool.enqueue(
        allocation_id,
        ask(workers, priority),
        deadline=None,
        tenant=None,
        at=at(seconds),
        actor="alice",
    )


def decide(
    pool: Pool,
    request: AllocationRequest,
    *,
    tenant: str | None = None,
    now: float = 60,
    preempt: bool = True,
    wait: bool = False,
) -> Admission:
    """`admit`, checking on the way that it changed nothing in the pool."""
    version, pending = pool.version, len(pool.pending_events)
    decision = admit(
        pool, request, tenant=tenant, now=at(now), preempt=preempt, wait=wait
    )
    assert (pool.version, len(pool.pending_events)) == (version, pending)
    return decision


def victims(decision: Admission) -> list[str]:
    assert isinstance(decision, Grant), decision
    return [v.allocation_id for v in decision.victims]


# -- grant -------------------------------------------------------------------------


def test_a_request_that_fits_is_granted_with_no_victims() -> None:
    pool = small_pool()
    hold(pool, "alloc-000000000001", 2)
    assert decide(pool, ask(2)) == Grant()


def test_the_resources_given_are_those_it_would_work_out() -> None:
    pool = small_pool()
    request = ask(2)
    needed = pool.settings.workers_for(request)
    assert needed == Resources(2_000, 4_096, 2)
    given = admit(
        pool,
        request,
        tenant=None,
        now=at(1),
        preempt=True,
        wait=False,
        resources=needed,
    )
    assert given == decide(pool, request) == Grant()


def test_a_request_that_does_not_fit_is_granted_over_lower_priorities() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 2, LOW, seconds=0)
    hold(pool, "alloc-00000000000b", 2, NORMAL, seconds=1)
    decision = decide(pool, ask(2, CRITICAL))
    # Critical may preempt low and normal: the low one alone is enough.
    assert victims(decision) == ["alloc-00000000000a"]
    assert isinstance(decision, Grant)
    assert decision.victims == (pool.reservations["alloc-00000000000a"],)


def test_victims_lowest_priority_first_then_fewest_then_youngest() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 1, LOW, seconds=0)
    hold(pool, "alloc-00000000000b", 1, LOW, seconds=1)
    hold(pool, "alloc-00000000000c", 2, NORMAL, seconds=2)
    # One worker: the youngest low one. Two: both lows, though the normal one
    # alone would be fewer (the lowest highest priority comes first). Three:
    # a normal must go, and then the fewest: the normal and the younger low.
    assert victims(decide(pool, ask(1, CRITICAL))) == ["alloc-00000000000b"]
    # (Victims are listed youngest first.)
    assert victims(decide(pool, ask(2, CRITICAL))) == [
        "alloc-00000000000b",
        "alloc-00000000000a",
    ]
    assert victims(decide(pool, ask(3, CRITICAL))) == [
        "alloc-00000000000c",
        "alloc-00000000000b",
    ]


def test_only_the_priorities_the_rules_name_are_victims() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 2, LOW)
    hold(pool, "alloc-00000000000b", 2, NORMAL)
    # High preempts low only: two workers are enough, three are not.
    assert victims(decide(pool, ask(2, HIGH))) == ["alloc-00000000000a"]
    assert decide(pool, ask(3, HIGH)) == Refuse(
        Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 3, 0)
    )
    # Normal preempts nobody.
    assert decide(pool, ask(1, NORMAL)) == Refuse(
        Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 1, 0)
    )


# -- preempt=False -----------------------------------------------------------------


def test_without_preempt_a_request_that_does_not_fit_is_refused() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 4, LOW)
    short = Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 2, 0)
    assert decide(pool, ask(2, CRITICAL), preempt=False) == Refuse(short)
    assert decide(pool, ask(2, CRITICAL), preempt=False, wait=True) == Queue(short)
    assert victims(decide(pool, ask(2, CRITICAL))) == ["alloc-00000000000a"]


# -- the queue comes first ---------------------------------------------------------


def test_a_newcomer_that_fits_waits_behind_the_queue() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 3)
    waiting(pool, "alloc-00000000000b", 2)
    # One worker is free, but the head (normal, 2 workers) comes first.
    ahead = Rejection(QUEUED_AHEAD, Dimension.WORKERS, 1, 1)
    assert decide(pool, ask(1), wait=True) == Queue(ahead)
    assert decide(pool, ask(1)) == Refuse(ahead)
    # A higher priority than the head's may pass it.
    assert decide(pool, ask(1, HIGH)) == Grant()


def test_requests_waiting_ahead_block_preemption_too() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 2, LOW)
    hold(pool, "alloc-00000000000b", 2, NORMAL)
    waiting(pool, "alloc-00000000000c", 2, HIGH)
    # High could preempt the low one, but a high request waits ahead: the
    # newcomer neither preempts nor passes; it waits for what it lacks.
    short = Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 2, 0)
    assert decide(pool, ask(2, HIGH), wait=True) == Queue(short)
    assert decide(pool, ask(2, HIGH)) == Refuse(short)
    # Critical ranks above the head: it preempts as if nobody waited.
    assert victims(decide(pool, ask(2, CRITICAL))) == ["alloc-00000000000a"]


def test_a_request_that_waited_ranks_higher_with_age() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 3)
    waiting(pool, "alloc-00000000000b", 2, LOW, seconds=0)
    assert decide(pool, ask(1), now=599) == Grant()  # low < normal: pass it
    ahead = Rejection(QUEUED_AHEAD, Dimension.WORKERS, 1, 1)
    assert decide(pool, ask(1), now=600) == Refuse(ahead)  # aged to normal


def test_under_backfill_a_newcomer_that_fits_passes_the_queue() -> None:
    pool = small_pool(Scheduling(queue_policy=QueuePolicy.BACKFILL))
    hold(pool, "alloc-00000000000a", 3)
    waiting(pool, "alloc-00000000000b", 2)
    assert decide(pool, ask(1)) == Grant()


# -- quota -------------------------------------------------------------------------


def test_over_quota_is_refused_first_waiting_or_not() -> None:
    pool = small_pool()
    pool.set_quota("team-a", Resources(2_000, 4_096, 2), at=T0, actor="local")
    hold(pool, "alloc-00000000000a", 2, tenant="team-a")
    over = Rejection(QUOTA_EXCEEDED, Dimension.WORKERS, 1, 0)
    assert decide(pool, ask(1), tenant="team-a") == Refuse(over)
    assert decide(pool, ask(1), tenant="team-a", wait=True) == Refuse(over)
    # Another tenant, or none, is not limited by team-a's quota.
    assert decide(pool, ask(1), tenant="team-b") == Grant()
    assert decide(pool, ask(1)) == Grant()


def test_quota_comes_before_the_queue_and_preemption() -> None:
    pool = small_pool()
    pool.set_quota("team-a", Resources(1_000, 2_048, 1), at=T0, actor="local")
    hold(pool, "alloc-00000000000a", 4, LOW)
    waiting(pool, "alloc-00000000000b", 1, CRITICAL)
    over = Rejection(QUOTA_EXCEEDED, Dimension.WORKERS, 2, 1)
    for wait in (False, True):
        assert decide(pool, ask(2, CRITICAL), tenant="team-a", wait=wait) == Refuse(
            over
        )


# -- never fits --------------------------------------------------------------------


def test_a_request_bigger_than_the_pool_is_refused_even_with_wait() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 1)
    # Without wait: the original refusal, what is free now.
    short = Refuse(Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 5, 3))
    assert decide(pool, ask(5)) == short
    assert decide(pool, ask(5, CRITICAL)) == short
    # With wait: why it is not queued, what the pool has in all.
    never = Refuse(Rejection(EXCEEDS_POOL, Dimension.WORKERS, 5, 4))
    assert decide(pool, ask(5), wait=True) == never
    assert decide(pool, ask(5, CRITICAL), wait=True) == never


def test_a_request_that_fits_the_empty_pool_is_queued_with_wait() -> None:
    pool = small_pool()
    hold(pool, "alloc-00000000000a", 1)
    short = Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 4, 3)
    assert decide(pool, ask(4), wait=True) == Queue(short)
    assert decide(pool, ask(4)) == Refuse(short)
