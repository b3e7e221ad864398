"""The preemption rule by brute force: the reference the tests hold the
ledger's choice of victims to (docs/scheduling.md, "Preemption").

`reference_victims` takes a pool built directly (`PoolView`, from
tests/pool_view.py), tries every subset of the allowed victims (priorities
the pool's rules name, and of other tenants only those the pool's
cross-tenant setting lets go: `may_lose_to`) and keeps the one the rule
prefers: lowest highest priority, then fewest, then
youngest (its oldest victim reserved latest, then its next oldest, ...;
equal times in order of allocation id). Whether a set of victims makes the
request fit is worked out here from the accounting of docs/scheduling.md,
not with the domain's `shortfall`: once the victims are gone, every MCP
server instance that no live allocation uses and the request does not name
is stopped (its cost and port free); the request needs its workers plus the
cost of each server it names that holds no cost yet (not running, or started
before instances held their cost).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from allocation_ledger.domain.pool_state import Reservation
from allocation_ledger.domain.values import AllocationRequest, Priority, Resources
from tests.pool_view import PoolView

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def reservation(
    allocation_id: str,
    priority: Priority,
    resources: Resources,
    *,
    seconds: float,
    servers: Sequence[str] = (),
    tenant: str | None = None,
) -> Reservation:
    return Reservation(
        allocation_id,
        resources,
        worker_ports=(),
        servers=tuple(servers),
        expires_at=T0 + timedelta(hours=9),
        priority=priority,
        tenant=tenant,
        reserved_at=T0 + timedelta(seconds=seconds),
    )


def may_lose_to(pool: PoolView, tenant: str | None, victim: Reservation) -> bool:
    """Whether the pool's cross-tenant setting lets a request of `tenant`
    preempt `victim` (docs/scheduling.md, "Preemption across tenants"): its
    own tenant's always; with `any` every tenant's; with `never` nobody
    else's; with `over_quota` (the default) another tenant's only if that
    tenant's live allocations (and those granted in the same decision) hold
    more than its quota in some dimension the victim holds some of."""
    if victim.tenant == tenant:
        return True
    setting = pool.scheduling.cross_tenant_preemption.value
    if setting == "any":
        return True
    if setting == "never" or victim.tenant is None:
        return False
    assert setting == "over_quota", setting
    quota = pool.quotas.get(victim.tenant)
    if quota is None:
        return False
    held = pool.also_held_by_tenant.get(victim.tenant, Resources())
    for other in pool.reservations.values():
        if other.tenant == victim.tenant:
            held = held + other.resources
    return (
        (held.workers > quota.workers and victim.resources.workers > 0)
        or (
            held.cpu_millicores > quota.cpu_millicores
            and victim.resources.cpu_millicores > 0
        )
        or (held.memory_mib > quota.memory_mib and victim.resources.memory_mib > 0)
    )


def fits_without(
    pool: PoolView,
    request: AllocationRequest,
    needed: Resources,
    victims: Sequence[Reservation],
) -> bool:
    """Whether the request fits once `victims` are gone and every instance
    nobody then uses (and the request does not name) is stopped."""
    gone = {v.allocation_id for v in victims}
    held = pool.also_held
    for reservation in pool.reservations.values():
        if reservation.allocation_id not in gone:
            held = held + reservation.resources
    wanted = needed
    kept_ports = 0
    for name, server in pool.servers.items():
        users = server.references - sum(name in v.servers for v in victims)
        if users > 0 or name in request.servers:
            if server.cost is not None:
                held = held + server.cost
            kept_ports += pool.ports.has_mcp_port(server.port)
    for name in request.servers:
        instance = pool.servers.get(name)
        if instance is None or instance.cost is None:
            wanted = wanted + pool.settings.cost_of_server(name)
    left = pool.capacity - held
    for want, have in (
        (wanted.workers, left.workers),
        (wanted.cpu_millicores, left.cpu_millicores),
        (wanted.memory_mib, left.memory_mib),
    ):
        if want > 0 and want > have:
            return False
    new_servers = sum(name not in pool.servers for name in request.servers)
    return new_servers <= pool.ports.mcp_count - kept_ports


def reference_victims(
    pool: PoolView,
    request: AllocationRequest,
    needed: Resources,
    now: datetime,
    *,
    tenant: str | None = None,
) -> list[str] | None:
    """The rule, by trying every subset of the allowed victims (`tenant`:
    the request's)."""
    allowed = [
        r
        for r in pool.reservations.values()
        if pool.scheduling.may_preempt(request.priority, r.priority)
        and may_lose_to(pool, tenant, r)
    ]
    youth = sorted(
        allowed, key=lambda r: (-(r.reserved_at or now).timestamp(), r.allocation_id)
    )
    position = {r.allocation_id: i for i, r in enumerate(youth)}
    best: tuple[object, ...] | None = None
    chosen: list[str] | None = None
    for size in range(1, len(allowed) + 1):
        for victims in itertools.combinations(allowed, size):
            if not fits_without(pool, request, needed, victims):
                continue
            oldest_first = sorted(
                (position[v.allocation_id] for v in victims), reverse=True
            )
            key = (max(v.priority.rank for v in victims), size, oldest_first)
            if best is None or key < best:
                best, chosen = key, sorted(v.allocation_id for v in victims)
    return chosen
