"""Admission: what becomes of a new request, decided once.

`admit` is a pure function over a pool's state. Its answer is one of three:
`Grant` (reserve now, after preempting the victims it names), `Queue` (wait,
holding nothing) or `Refuse` (record the request as rejected). The rules are
those of docs/scheduling.md, "What happens to a request", in that order:

1. Quota: a tenant that would pass its quota in the pool is refused
   (`quota_exceeded`); waiting would not help, so it is never queued, and
   it never preempts anyone.
2. (Expiring what is already due, and serving the queued requests that
   rank ahead of the newcomer, are the command's steps before it asks: the
   queue and the newcomer share one ranking for what is free.)
3. The queue comes first: under the strict policy a request does not pass a
   queued request of at least its effective priority, neither by fitting
   nor by preempting (`queued_ahead`, or the shortfall if it does not fit).
4. Preemption: if nobody waits ahead, it does not fit (idle MCP server
   instances it does not name count as reclaimable: they are stopped
   before anyone is preempted) and `preempt` is true,
   it may take the capacity of live allocations of strictly lower priority
   that the pool's rules allow (preemption.py), but only of allocations
   that were live before this decision: one granted in the same unit of
   work (`granted_now`) is never preempted by it (invariant 10: nothing is
   granted and preempted in one decision). Of other tenants' allocations,
   only those the pool's `cross_tenant_preemption` allows are candidates
   (cross_tenant.py); when that alone kept preemption from helping, the
   refusal (or what a queued request waits for) says so in `preemption`.
5. Queue or refuse: a request that does not fit is queued with `wait`, else
   refused (`insufficient_capacity`, what is free now). One bigger than the
   whole pool is never queued (invariant 10: nothing stays queued that can
   never be granted): with `wait` it is refused `exceeds_pool` (what the
   pool has in all), which is why it was not queued.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import datetime

from allocation_ledger.domain.capacity import never_fits, quota_shortfall, shortfall
from allocation_ledger.domain.cross_tenant import CrossTenantRule, cross_tenant_rule
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.pool_state import (
    PoolState,
    QueueEntry,
    Reservation,
    ServerInstance,
)
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.preemption import (
    preemption_candidates,
    preemption_victims,
)
from allocation_ledger.domain.queueing import waiting_ahead
from allocation_ledger.domain.scheduling import CrossTenantPreemption, Scheduling
from allocation_ledger.domain.values import AllocationRequest, Rejection, Resources


@dataclass(frozen=True)
class Grant:
    """Reserve the request's capacity now, after preempting `victims`.

    `victims`: live reservations (youngest first; chosen by the rule in
    preemption.py) whose allocations are preempted first, in the same unit of
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
    granted_now: Collection[str] = (),
) -> Admission:
    """Decide what becomes of a new request in `pool`, as things are at `now`.

    `tenant`: whose quota it counts against (None: no quota applies), and
    whose allocations are its own for preemption (cross_tenant.py);
    `preempt`: whether it may take lower priorities' capacity; `wait`:
    whether it may be queued instead of refused; `resources`: what its
    allocation holds while live (its workers: millicores, MiB, workers), if
    the caller worked it out already (`pool.settings.workers_for(request)`;
    fitting also counts the costs of the servers it would start, and idle
    instances it would reclaim: capacity.py); `granted_now`: the
    allocations whose reservations were made in this same unit of work
    (granted from the queue just before): never victims. Reads the pool, changes
    nothing and raises nothing. The rules, in order, are in the module's
    docstring (from docs/scheduling.md).
    """
    needed = pool.settings.workers_for(request) if resources is None else resources
    over_quota = quota_shortfall(pool, tenant, needed)
    if over_quota is not None:
        return Refuse(over_quota)
    short = shortfall(pool, request, needed)
    ahead = waiting_ahead(pool, request, needed, now)
    if ahead is None:
        if short is None:
            return Grant()
        refusal = short
        if preempt:
            live_before = _LiveBefore(pool, frozenset(granted_now))
            across = cross_tenant_rule(live_before, tenant)
            victims = preemption_victims(
                live_before, request, needed, now=now, tenant=tenant, across=across
            )
            if victims:
                return Grant(tuple(victims))
            refusal = _noted(
                live_before, request, needed, short, across=across, now=now
            )
    else:
        refusal = short or ahead
    if not wait:
        return Refuse(refusal)
    never = never_fits(
        pool, pool.settings.in_empty_pool(request), servers=len(request.servers)
    )
    return Queue(refusal) if never is None else Refuse(never)


def _noted(
    pool: PoolState,
    request: AllocationRequest,
    needed: Resources,
    short: Rejection,
    *,
    across: CrossTenantRule,
    now: datetime,
) -> Rejection:
    """`short`, saying so (`preemption`) when preemption did not help only
    because of the pool's cross-tenant rule: the allocations its priority
    may preempt, of every tenant, would make room (cross_tenant.py)."""
    note = across.refusal_note
    if note is None:
        return short
    anyone = CrossTenantRule(CrossTenantPreemption.ANY, across.tenant, {})
    candidates = preemption_candidates(pool, request, now, tenant=None, across=anyone)
    if not candidates or (
        shortfall(pool, request, needed, freeing=candidates) is not None
    ):
        return short
    return replace(short, preemption=note)


@dataclass(frozen=True)
class _LiveBefore:
    """A pool as preemption sees it for one decision: all as it is, except
    that reservations made in this same unit of work (`granted_now`) are
    not there to be taken. What is available, and what MCP servers hold,
    stay the pool's own, so the victims found free exactly what they hold."""

    pool: PoolState
    granted_now: frozenset[str]

    @property
    def settings(self) -> PoolSettings:
        return self.pool.settings

    @property
    def available(self) -> Resources:
        return self.pool.available

    @property
    def reservations(self) -> Mapping[str, Reservation]:
        if not self.granted_now:
            return self.pool.reservations
        return {
            allocation_id: reservation
            for allocation_id, reservation in self.pool.reservations.items()
            if allocation_id not in self.granted_now
        }

    @property
    def servers(self) -> Mapping[str, ServerInstance]:
        return self.pool.servers

    @property
    def ports(self) -> PortRanges:
        return self.pool.ports

    @property
    def scheduling(self) -> Scheduling:
        return self.pool.scheduling

    @property
    def queue(self) -> Mapping[str, QueueEntry]:
        return self.pool.queue

    @property
    def quotas(self) -> Mapping[str, Resources]:
        return self.pool.quotas
