"""Whether a request fits: in a pool as it is, in an empty pool, in a quota.

Pure functions over a pool's state (`PoolState`). Each answers with the
first dimension that does not fit, as a `Rejection` (amounts in millicores,
MiB, workers or MCP ports), or None. Dimensions are checked in the order
workers, CPU, memory (then MCP ports), so a refusal names the same dimension
the original resource manager did. A dimension a request needs none of never
refuses it, even when a pool is over-committed after its capacity was
lowered (design contract: lowering capacity never evicts).

What a request needs (docs/scheduling.md, "What a request needs"): `held`,
what its allocation holds while live (its workers,
`pool.settings.workers_for(request)`, worked out once by the caller), plus
the cost of each MCP server it names that reserves nothing yet in the pool
(`starting_costs`): one with no instance, which the grant starts, or one
started before instances held their cost, which the grant charges. What it
can have: what is available plus the costs of the idle instances it does
not name, which are reclaimed (stopped) in the same decision, longest idle
first and only as many as needed (`to_reclaim`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from allocation_ledger.domain.pool_state import PoolState, Reservation, ServerInstance
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


def starting_costs(pool: PoolState, request: AllocationRequest) -> Resources:
    """The costs a grant of `request` would reserve for its MCP servers now
    (millicores, MiB): those of the servers it names that have no instance
    in the pool, and of instances started before instances held their cost
    (`ServerInstance.cost` None), which the grant charges. A running or idle
    instance that holds its cost adds nothing: it is shared."""
    total = Resources()
    for name in request.servers:
        instance = pool.servers.get(name)
        if instance is None or instance.cost is None:
            total = total + pool.settings.cost_of_server(name)
    return total


def reclaimable(
    pool: PoolState, request: AllocationRequest, freeing: Iterable[Reservation] = ()
) -> list[ServerInstance]:
    """The instances a grant of `request` may stop for room, longest idle
    first: those no live allocation uses once `freeing` is given back, that
    the request does not name. (One still in use until `freeing` goes counts
    as idle from now: after every instance idle already.)"""
    if not pool.servers:
        return []
    users = Counter(name for r in freeing for name in r.servers)
    found = [
        s
        for s in pool.servers.values()
        if s.references - users[s.name] <= 0 and s.name not in request.servers
    ]
    found.sort(
        key=lambda s: (s.idle_since is None, s.idle_since or s.started_at, s.name)
    )
    return found


def room_for(
    pool: PoolState, request: AllocationRequest, freeing: Iterable[Reservation] = ()
) -> Resources:
    """What `request` could have (millicores, MiB, workers): what is
    available, plus what `freeing` holds, plus the costs of the instances it
    could reclaim once `freeing` is given back (`reclaimable`)."""
    freed = list(freeing)
    room = pool.available
    for reservation in freed:
        room = room + reservation.resources
    for instance in reclaimable(pool, request, freed):
        room = room + instance.held
    return room


def shortfall(
    pool: PoolState,
    request: AllocationRequest,
    held: Resources,
    *,
    freeing: Iterable[Reservation] = (),
) -> Rejection | None:
    """The first dimension the request does not fit in, or None if it fits.

    `held`: what its allocation would hold (its workers). It needs that
    plus `starting_costs`; it can have `room_for` (idle instances it does
    not name count as reclaimed). `freeing`: reservations to count as
    already given back (preemption victims): their amounts are available
    again, and an MCP server only they use (not named by the request) is
    idle, hence reclaimable, its cost and port too. A new MCP server needs
    a free port, or the port of an idle server the request does not use (it
    is stopped). Code `insufficient_capacity`; `requested` and `available`
    are those two amounts.
    """
    freed = list(freeing)
    wanted = held + starting_costs(pool, request)
    available = room_for(pool, request, freed)
    for dimension in AMOUNTS:
        want = wanted.amount(dimension)
        left = available.amount(dimension)
        if want > 0 and want > left:
            return Rejection(INSUFFICIENT_CAPACITY, dimension, want, max(left, 0))
    released_names = [name for r in freed for name in r.servers]
    ports_wanted, ports_left = _mcp_ports(pool, request, released_names)
    if ports_wanted > ports_left:
        return Rejection(
            INSUFFICIENT_CAPACITY, Dimension.MCP_PORTS, ports_wanted, ports_left
        )
    return None


def to_reclaim(
    pool: PoolState, request: AllocationRequest, held: Resources
) -> list[ServerInstance]:
    """The idle instances to stop before granting `request` (one that fits:
    `shortfall` is None), in the order to stop them: longest idle first,
    each only while a dimension it would give room in is still short (an
    amount its cost has, or MCP ports when its port is in the pool's MCP
    range). Empty when the request fits as things are."""
    wanted = held + starting_costs(pool, request)
    available = pool.available
    ports_wanted = sum(1 for name in request.servers if name not in pool.servers)
    ports_left = free_mcp_ports(pool.ports, (s.port for s in pool.servers.values()))
    chosen: list[ServerInstance] = []
    for instance in reclaimable(pool, request):
        short = [
            d
            for d in AMOUNTS
            if wanted.amount(d) > 0 and wanted.amount(d) > available.amount(d)
        ]
        ports_short = ports_wanted > ports_left
        if not short and not ports_short:
            break
        frees_amount = any(instance.held.amount(d) > 0 for d in short)
        frees_port = ports_short and pool.ports.has_mcp_port(instance.port)
        if frees_amount or frees_port:
            chosen.append(instance)
            available = available + instance.held
            if pool.ports.has_mcp_port(instance.port):
                ports_left += 1
    return chosen


def fits_as_is(pool: PoolState, request: AllocationRequest, held: Resources) -> bool:
    """Whether `request` fits without stopping anything: its workers and
    starting costs in what is available, its new servers in free ports."""
    wanted = held + starting_costs(pool, request)
    available = pool.available
    for dimension in AMOUNTS:
        want = wanted.amount(dimension)
        if want > 0 and want > available.amount(dimension):
            return False
    new_servers = sum(1 for name in request.servers if name not in pool.servers)
    free = free_mcp_ports(pool.ports, (s.port for s in pool.servers.values()))
    return new_servers <= free


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
    """Why a request could not fit even in the empty pool, if so: `needed`
    is what it would reserve there, its workers and one instance of each
    server it names (`PoolSettings.in_empty_pool`). Such a request is
    refused rather than queued, and one already queued fails
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
    """What a tenant's live allocations hold in the pool (their workers; the
    costs of MCP server instances are the pool's, no tenant's)."""
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
    limits what the tenant's allocations hold at once, their workers
    (`needed`: the request's; docs/scheduling.md, "Quotas"): the cost of a
    shared MCP server instance counts against no tenant's quota;
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
