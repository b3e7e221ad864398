"""Preemption: whose capacity a request that does not fit may take.

A pure function over a pool's state (`PoolState`). Only live allocations of
a strictly lower priority that the pool's rules let the request's priority
preempt are candidates (docs/scheduling.md, "Preemption"); of the sets of
them that would make the request fit, the smallest is taken, and among sets
of that size the one of lowest priorities, then youngest (the rule the
property tests check: tests/test_ledger_state_machine.py).
"""

from __future__ import annotations

import itertools
from datetime import datetime

from allocation_ledger.domain.capacity import shortfall
from allocation_ledger.domain.pool_state import PoolState, Reservation
from allocation_ledger.domain.values import AllocationRequest, Resources

EXACT_PREEMPTION_SEARCH = 12
"""Up to this many candidates, the smallest victim set is found exactly; with
more, lowest-priority-youngest-first victims are taken until the request fits,
then any that turn out not to be needed are spared."""


def preemption_candidates(
    pool: PoolState, request: AllocationRequest, now: datetime
) -> list[Reservation]:
    """Live allocations the request's priority may preempt here, in order of
    preference: lowest priority first, then youngest (latest reserved; one
    reserved before times were kept counts as reserved `now`), then id."""
    allowed = [
        r
        for r in pool.reservations.values()
        if pool.scheduling.may_preempt(request.priority, r.priority)
    ]
    allowed.sort(
        key=lambda r: (
            r.priority.rank,
            -(r.reserved_at or now).timestamp(),
            r.allocation_id,
        )
    )
    return allowed


def preemption_victims(
    pool: PoolState, request: AllocationRequest, needed: Resources, *, now: datetime
) -> list[Reservation] | None:
    """The smallest set of live allocations whose capacity would let the
    request fit, lowest priority first, youngest first among sets of that
    size; None if no set the policy allows would do.

    `needed`: what the request holds while live (millicores, MiB, workers).
    Call it only for a request that does not fit as things are: the answer
    is then never empty.
    """
    allowed = preemption_candidates(pool, request, now)
    if not allowed or shortfall(pool, request, needed, freeing=allowed) is not None:
        return None
    if len(allowed) <= EXACT_PREEMPTION_SEARCH:
        # Smallest sets first; within a size, combinations come in the
        # order of preference (lowest priority, then youngest).
        for size in range(1, len(allowed) + 1):
            for victims in itertools.combinations(allowed, size):
                if shortfall(pool, request, needed, freeing=victims) is None:
                    return list(victims)
    chosen: list[Reservation] = []
    for reservation in allowed:
        if shortfall(pool, request, needed, freeing=chosen) is None:
            break
        chosen.append(reservation)
    for reservation in reversed(list(chosen)):
        fewer = [r for r in chosen if r is not reservation]
        if shortfall(pool, request, needed, freeing=fewer) is None:
            chosen = fewer
    return chosen
