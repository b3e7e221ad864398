"""Admission: what becomes of a new request, decided once.

`admit` is a pure function over a pool's state. Its answer is one of three:
`Grant` (reserve now, after preempting the victims it names), `Queue` (wait,
holding nothing) or `Refuse` (record the request as rejected). The rules are
those of docs/scheduling.md, "What happens to a request", in that order:

1. Quota: a tenant that would pass its quota in the pool is refused
   (`quota_exceeded`); waiting would not help, so it is never queued, and
   it never preempts anyone.
2. (Expiring what is already due is the command's step, before it asks.)
3. The queue comes first: under the strict policy a request does not pass a
   queued request of at least its effective priority, neither by fitting
   nor by preempting (`queued_ahead`, or the shortfall if it does not fit).
4. Preemption: if nobody waits ahead, it does not fit and `preempt` is true,
   it may take the capacity of live allocations of strictly lower priority
   that the pool's rules allow (preemption.py).
5. Queue or refuse: a request that does not fit is queued with `wait`, else
   refused (`insufficient_capacity`); one bigger than the whole pool is
   always refused (invariant 10: nothing stays queued that can never be
   granted), with the same reason it would have waited for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from allocation_ledger.domain.capacity import never_fits, quota_shortfall, shortfall
from allocation_ledger.domain.pool_state import PoolState, Reservation
from allocation_ledger.domain.preemption import preemption_victims
from allocation_ledger.domain.queueing import waiting_ahead
from allocation_ledger.domain.values import AllocationRequest, Rejection, Resources


@dataclass(frozen=True)
class Grant:
    """Reserve the request's capacity now, after preempting `victims`.

    `victims`: live reservations (in the order found: lowest priority, then
    youngest) whose allocations are preempted first, in the same unit of
    work; empty when the request fits as things are.
    """

    victims: tuple[Reservation, ...] = ()


@dataclass(frozen=True)
class Queue:
    """Queue the request, holding nothing, until room frees or it times out.

    `waiting_for`: what it waits for (recorded on its Queued event): the
    first dimension short (`insufficient_capacity`) or, when it would fit,
    the queue ahead of it (`queued_ahead`).
    """

    waiting_for: Rejection


@dataclass(frozen=True)
class Refuse:
    """Record the request as rejected with `reason`; nothing is reserved."""

    reason: Rejection


Admission = Grant | Queue | Refuse
"""The one answer `admit` gives."""


def admit(
    pool: PoolState,
    request: AllocationRequest,
    *,
    tenant: str | None,
    now: datetime,
    preempt: bool,
    wait: bool,
    resources: Resources | None = None,
) -> Admission:
    """Decide what becomes of a new request in `pool`, as things are at `now`.

    `tenant`: whose quota it counts against (None: no quota applies);
    `preempt`: whether it may take lower priorities' capacity; `wait`:
    whether it may be queued instead of refused; `resources`: what it holds
    while live (millicores, MiB, workers), if the caller worked it out
    already (`pool.settings.resources_for(request)`). Reads the pool, changes
    nothing and raises nothing. The rules, in order, are in the module's
    docstring (from docs/scheduling.md).
    """
    needed = pool.settings.resources_for(request) if resources is None else resources
    over_quota = quota_shortfall(pool, tenant, needed)
    if over_quota is not None:
        return Refuse(over_quota)
    short = shortfall(pool, request, needed)
    ahead = waiting_ahead(pool, request, needed, now)
    if ahead is None:
        if short is None:
            return Grant()
        if preempt:
            victims = preemption_victims(pool, request, needed, now=now)
            if victims:
                return Grant(tuple(victims))
        refusal = short
    else:
        refusal = short or ahead
    if wait and never_fits(pool, needed) is None:
        return Queue(refusal)
    return Refuse(refusal)
