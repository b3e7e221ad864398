"""Whether a request fits: in a pool as it is, in an empty pool, in a quota.

Pure functions over a pool's state (`PoolState`). Each answers with the
first dimension that does not fit, as a `Rejection` (amounts in millicores,
MiB, workers or MCP ports), or None. Dimensions are checked in the order
workers, CPU, memory (then MCP ports), so a refusal names the same dimension
the original resource manager did. A dimension a request needs none of never
refuses it, even when a pool is over-committed after its capacity was
lowered (design contract: lowering capacity never evicts).

`needed` is what the request holds while live
(`pool.settings.resources_for(request)`), worked out once by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable

from allocation_ledger.domain.pool_state import PoolState, Reservation
from allocation_ledger.domain.ports import free_mcp_ports
from allocation_ledger.domain.values import (
    EXCEEDS_POOL,
    INSUFFICIENT_CAPACITY,
    QUOTA_EXCEEDED,
    AllocationRequest,
    Dimension,
    Rejection,
    Resources,
)

AMOUNTS = (Dimension.WORKERS, Dimension.CPU, Dimension.MEMORY)
"""The dimensions held as amounts, in the order a refusal looks at them."""


def shortfall(
    pool: PoolState,
    request: AllocationRequest,
    needed: Resources,
    *,
    freeing: Iterable[Reservation] = (),
) -> Rejection | None:
    """The first dimension the request does not fit in, or None if it fits.

    `freeing`: reservations to count as already given back (preemption
    victims): their amounts are available again, and an MCP server only they
    use could be stopped for its port. A new MCP server needs a free port,
    or the port of an idle server the request does not use (it is stopped).
    Code `insufficient_capacity`.
    """
    available = pool.available
    released_names: list[str] = []
    for reservation in freeing:
        available = available + reservation.resources
        released_names.extend(reservation.servers)
    for dimension in AMOUNTS:
        wanted = needed.amount(dimension)
        left = available.amount(dimension)
        if wanted > 0 and wanted > left:
            return Rejection(INSUFFICIENT_CAPACITY, dimension, wanted, max(left, 0))
    wanted, left = _mcp_ports(pool, request, released_names)
    if wanted > left:
        return Rejection(INSUFFICIENT_CAPACITY, Dimension.MCP_PORTS, wanted, left)
    return None


def ports_short(pool: PoolState, request: AllocationRequest) -> int:
    """How many more MCP ports the request needs than the pool can give it
    now (0 if it has enough): one per MCP server it names that does not
    run yet, against free ports and those of idle servers it does not use."""
    wanted, left = _mcp_ports(pool, request, [])
    return max(wanted - left, 0)


def _mcp_ports(
    pool: PoolState, request: AllocationRequest, released_names: list[str]
) -> tuple[int, int]:
    """(ports the request needs for new MCP servers, ports it could have),
    counting servers used only by the reservations of `released_names` (one
    name per reservation using it) as stoppable."""
    new_servers = [n for n in request.servers if n not in pool.servers]
    reclaimable = [
        s
        for s in pool.servers.values()
        if s.references - released_names.count(s.name) == 0
        and s.name not in request.servers
        and pool.ports.has_mcp_port(s.port)
    ]
    left = free_mcp_ports(pool.ports, (s.port for s in pool.servers.values()))
    return len(new_servers), left + len(reclaimable)


def never_fits(
    pool: PoolState, needed: Resources, *, servers: int = 0
) -> Rejection | None:
    """Why a request could not fit even in the empty pool, if so: such a
    request is refused rather than queued, and one already queued fails
    when the pool shrinks below it (invariant 10: nothing stays queued that
    can never be granted). `servers`: how many MCP servers it names (more
    than the pool's MCP range has ports never fit). `available` in the
    answer is the pool's total. Code `exceeds_pool`."""
    total = pool.settings.capacity
    for dimension in AMOUNTS:
        wanted = needed.amount(dimension)
        if wanted > 0 and wanted > total.amount(dimension):
            return Rejection(EXCEEDS_POOL, dimension, wanted, total.amount(dimension))
    if servers > pool.ports.mcp_count:
        return Rejection(
            EXCEEDS_POOL, Dimension.MCP_PORTS, servers, pool.ports.mcp_count
        )
    return None


def held_by(pool: PoolState, tenant: str) -> Resources:
    """What a tenant's live allocations hold in the pool."""
    held = Resources()
    for reservation in pool.reservations.values():
        if reservation.tenant == tenant:
            held = held + reservation.resources
    return held


def quota_shortfall(
    pool: PoolState, tenant: str | None, needed: Resources
) -> Rejection | None:
    """The first dimension in which the tenant would pass its quota in the
    pool, or None (also for no tenant, or a tenant without a quota). A quota
    limits what the tenant holds at once (docs/scheduling.md, "Quotas");
    `available` in the answer is what is left of it. Code `quota_exceeded`.
    """
    if tenant is None or tenant not in pool.quotas:
        return None
    limit = pool.quotas[tenant]
    held = held_by(pool, tenant)
    for dimension in AMOUNTS:
        wanted = needed.amount(dimension)
        left = limit.amount(dimension) - held.amount(dimension)
        if wanted > 0 and wanted > left:
            return Rejection(QUOTA_EXCEEDED, dimension, wanted, max(left, 0))
    return None


def quota_never_fits(
    pool: PoolState, tenant: str | None, needed: Resources
) -> Rejection | None:
    """Why a request could not fit its tenant's quota even if the tenant held
    nothing, if so (a quota merely used up now is not that: it frees as the
    tenant's leases end). `available` in the answer is the quota's limit.
    Code `quota_exceeded`."""
    if tenant is None or tenant not in pool.quotas:
        return None
    limit = pool.quotas[tenant]
    for dimension in AMOUNTS:
        wanted = needed.amount(dimension)
        if wanted > 0 and wanted > limit.amount(dimension):
            return Rejection(QUOTA_EXCEEDED, dimension, wanted, limit.amount(dimension))
    return None
