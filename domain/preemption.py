"""Preemption: whose capacity a request that does not fit may take.

A pure function over a pool's state (`PoolState`). Only live allocations of
a strictly lower priority that the pool's rules let the request's priority
preempt are candidates (docs/scheduling.md, "Preemption"), and of other
tenants' allocations only those the pool's `cross_tenant_preemption` lets
it take (cross_tenant.py: by default, those of tenants over their quota);
candidates are filtered before the search, so the rule below is exact over
them. Of the sets of
candidates that would make the request fit, the one taken is, in this order
(the order Kubernetes and Kueue use):

1. the set whose highest priority is lowest;
2. then the set with the fewest victims;
3. then the youngest set: the one whose oldest victim was reserved latest,
   and if that ties, whose next oldest was, and so on; allocations reserved
   at the same instant count as younger in the order of their ids.

What a set of victims frees (docs/scheduling.md, "Preemption"): their
workers, and the cost and port of each MCP server instance whose every user
is in the set and that the request does not name (it goes idle, so it is
reclaimed in the same decision). Idle instances are reclaimed before anyone
is preempted: a request that fits with them preempts nobody.

The rule is exact for any number of candidates; tests/test_preemption.py
checks it against a search of every subset, and the ledger state machine
checks the ledger's every preemption against it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from datetime import datetime

from allocation_ledger.domain.capacity import (
    AMOUNTS,
    ports_short,
    room_for,
    shortfall,
    starting_costs,
)
from allocation_ledger.domain.cross_tenant import CrossTenantRule, cross_tenant_rule
from allocation_ledger.domain.pool_state import PoolState, Reservation
from allocation_ledger.domain.values import AllocationRequest, Resources

Gains = tuple[int, ...]
"""What freeing one reservation gives back at most, per dimension: workers,
millicores, MiB (as in `AMOUNTS`), then MCP ports. A server instance it
uses counts in full for each reservation using it (an upper bound)."""


def preemption_candidates(
    pool: PoolState,
    request: AllocationRequest,
    now: datetime,
    *,
    tenant: str | None,
    across: CrossTenantRule | None = None,
) -> list[Reservation]:
    """Live allocations a request of `tenant` may preempt here, youngest
    first: latest reserved first (one reserved before times were kept counts
    as reserved `now`), then in order of allocation id. Its priority must
    be allowed to preempt theirs, and `across` (by default the pool's
    cross-tenant rule, `cross_tenant_rule(pool, tenant)`) must allow them."""
    rule = cross_tenant_rule(pool, tenant) if across is None else across
    allowed = [
        r
        for r in pool.reservations.values()
        if pool.scheduling.may_preempt(request.priority, r.priority) and rule.allows(r)
    ]
    allowed.sort(key=lambda r: (-(r.reserved_at or now).timestamp(), r.allocation_id))
    return allowed


def preemption_victims(
    pool: PoolState,
    request: AllocationRequest,
    needed: Resources,
    *,
    now: datetime,
    tenant: str | None,
    across: CrossTenantRule | None = None,
) -> list[Reservation] | None:
    """The victims the rule above chooses, youngest first; None if no set
    the pool's rules allow would make the request fit.

    `tenant`: the request's (None: no tenant); `across`: the cross-tenant
    rule to apply (by default the pool's, worked out now).

    `needed`: what the request's allocation holds while live (its workers:
    millicores, MiB, workers; `capacity.shortfall` adds the costs of the
    servers it would start). Call it only for a request that does not fit
    as things are: the answer is then never empty.
    """
    allowed = preemption_candidates(pool, request, now, tenant=tenant, across=across)
    if not allowed or shortfall(pool, request, needed, freeing=allowed) is not None:
        return None
    eligible = allowed
    for top in sorted({r.priority.rank for r in allowed}):
        eligible = [r for r in allowed if r.priority.rank <= top]
        if shortfall(pool, request, needed, freeing=eligible) is None:
            break
    return _FewestYoungest(pool, request, needed, eligible).search()


class _FewestYoungest:
    """The smallest set of `candidates` (youngest first) that makes the
    request fit, and of those the youngest (colexicographic order of their
    positions: the lowest greatest position first).

    Sizes are tried from one up. For a size, positions are chosen greatest
    first, each as low as it can be, so the first set that fits is the
    youngest of its size. A branch is cut as soon as, in some dimension, the
    largest gains that the positions left could add cannot cover what is
    still missing: gains are upper bounds (an MCP server instance, its cost
    and its port, counts as freed for each reservation using it, though it
    is freed only with the last of them), so no set that fits is ever cut,
    and `shortfall` decides each complete set. With one dimension short and
    no shared server the bound is exact and no branch is entered in vain.
    """

    def __init__(
        self,
        pool: PoolState,
        request: AllocationRequest,
        needed: Resources,
        candidates: Sequence[Reservation],
    ) -> None:
        self._pool = pool
        self._request = request
        self._needed = needed
        self._candidates = candidates
        self._gains: list[Gains] = [self._gain(r) for r in candidates]
        self._chosen: list[int] = []

    def search(self) -> list[Reservation] | None:
        missing = self._missing()
        for size in range(1, len(self._candidates) + 1):
            self._chosen = []
            if self._choose(size, len(self._candidates), missing):
                return [self._candidates[i] for i in sorted(self._chosen)]
        return None

    def _gain(self, reservation: Reservation) -> Gains:
        servers = {n for n in reservation.servers if n not in self._request.servers}
        freed = reservation.resources
        for name in servers:
            instance = self._pool.servers.get(name)
            if instance is not None:
                freed = freed + instance.held
        amounts = tuple(freed.amount(d) for d in AMOUNTS)
        return (*amounts, len(servers))

    def _missing(self) -> Gains:
        """What the request lacks per dimension before anyone is freed (idle
        instances it does not name count as reclaimed)."""
        available = room_for(self._pool, self._request)
        wanted = self._needed + starting_costs(self._pool, self._request)
        amounts = tuple(
            max(wanted.amount(d) - available.amount(d), 0)
            if wanted.amount(d) > 0
            else 0
            for d in AMOUNTS
        )
        return (*amounts, ports_short(self._pool, self._request))

    def _choose(self, count: int, below: int, missing: Gains) -> bool:
        """Add to `_chosen` the colexicographically first `count` positions
        under `below` that make the request fit; False if there are none."""
        if count == 0:
            freeing = [self._candidates[i] for i in self._chosen]
            return (
                shortfall(self._pool, self._request, self._needed, freeing=freeing)
                is None
            )
        best = _LargestGains(count - 1, len(missing))
        for position in range(below):
            if position >= count - 1:
                left = tuple(
                    m - g for m, g in zip(missing, self._gains[position], strict=True)
                )
                if best.may_cover(left):
                    self._chosen.append(position)
                    if self._choose(count - 1, position, left):
                        return True
                    self._chosen.pop()
            best.add(self._gains[position])
        return False


class _LargestGains:
    """The sum, per dimension, of the `keep` largest gains added so far."""

    def __init__(self, keep: int, dimensions: int) -> None:
        self._keep = keep
        self._heaps: list[list[int]] = [[] for _ in range(dimensions)]
        self._sums = [0] * dimensions

    def add(self, gains: Gains) -> None:
        if self._keep == 0:
            return
        for d, gain in enumerate(gains):
            heap = self._heaps[d]
            if len(heap) < self._keep:
                heapq.heappush(heap, gain)
                self._sums[d] += gain
            elif gain > heap[0]:
                self._sums[d] += gain - heapq.heapreplace(heap, gain)

    def may_cover(self, missing: Gains) -> bool:
        return all(m <= 0 or m <= s for m, s in zip(missing, self._sums, strict=True))
