"""The preemption rule, exact for any number of candidates (issue 12, item 3).

Of the sets of allowed victims that make a request fit, the ledger takes the
one whose highest priority is lowest, then the one with fewest victims, then
the youngest (its oldest victim reserved latest, then its next oldest, ...;
equal times in order of allocation id). Here `preemption_victims` is checked
against a search of every subset on generated pools, on the issue's inputs
through the ledger, and on pools far larger than any subset search could
cover, where the answer is known by construction.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.capacity import shortfall
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool_state import Reservation, ServerInstance
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.preemption import preemption_victims
from allocation_ledger.domain.scheduling import CrossTenantPreemption, Scheduling
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Priority,
    Resources,
)
from tests.pool_view import PoolView
from tests.preemption_reference import (
    T0,
    fits_without,
    reference_victims,
    reservation,
)

LOW, NORMAL, HIGH, CRITICAL = (
    Priority.LOW,
    Priority.NORMAL,
    Priority.HIGH,
    Priority.CRITICAL,
)


def chosen_ids(
    pool: PoolView,
    request: AllocationRequest,
    needed: Resources,
    *,
    tenant: str | None = None,
) -> list[str] | None:
    victims = preemption_victims(pool, request, needed, now=T0, tenant=tenant)
    return None if victims is None else sorted(v.allocation_id for v in victims)


# -- generated pools, against the search of every subset -------------------------

SERVER_NAMES = ("fs", "git", "web")


@st.composite
def pools_and_requests(
    draw: st.DrawFn,
) -> tuple[PoolView, AllocationRequest, Resources, str | None]:
    """A pool, a request that may preempt, what it needs and its tenant.
    Allocations belong to tenants `a`, `b` or none; `a` and `b` may have
    quotas, often below what they hold (as after `set_quota` lowered them)."""
    count = draw(st.integers(1, 9))
    reservations: dict[str, Reservation] = {}
    for i in range(count):
        workers = draw(st.integers(0, 3))
        reservations[f"a{i}"] = reservation(
            f"a{i}",
            draw(st.sampled_from([LOW, NORMAL, HIGH])),
            Resources(
                draw(st.integers(0, 4)) * 250,
                draw(st.integers(0, 4)) * 512,
                workers,
            ),
            # Few distinct times, so that ties in age are common.
            seconds=draw(st.integers(0, 4)),
            servers=draw(st.lists(st.sampled_from(SERVER_NAMES), unique=True)),
            tenant=draw(TENANTS),
        )
    quotas = {
        tenant: Resources(
            draw(st.integers(0, 6)) * 250,
            draw(st.integers(0, 6)) * 512,
            draw(st.integers(0, 4)),
        )
        for tenant in draw(st.sets(st.sampled_from(("a", "b"))))
    }
    held = Resources()
    for r in reservations.values():
        held = held + r.resources
    spare = Resources(
        draw(st.integers(0, 2)) * 250,
        draw(st.integers(0, 2)) * 512,
        draw(st.integers(0, 2)),
    )
    in_use = sorted({n for r in reservations.values() for n in r.servers})
    idle = draw(st.lists(st.sampled_from(["idle-a", "idle-b"]), unique=True))
    costs = {
        name: Resources(draw(st.integers(0, 3)) * 250, draw(st.integers(0, 2)) * 512)
        for name in ("new", *SERVER_NAMES, "idle-a", "idle-b")
    }
    # Some instances started before instances held their cost (None).
    legacy = draw(st.sets(st.sampled_from((*SERVER_NAMES, "idle-a")), max_size=1))
    servers = {
        name: ServerInstance(
            name,
            9000 + i,
            references=sum(name in r.servers for r in reservations.values()),
            started_at=T0,
            idle_since=None if name in in_use else T0 + timedelta(seconds=i),
            cost=None if name in legacy else costs[name],
        )
        for i, name in enumerate([*in_use, *idle])
    }
    for server in servers.values():
        held = held + server.held
    mcp_ports = draw(st.integers(len(servers), len(servers) + 1))
    pool = PoolView(
        capacity=held + spare,
        reservations=reservations,
        servers=servers,
        ports=PortRanges(mcp_first=9000, mcp_last=9000 + max(mcp_ports, 1) - 1),
        server_costs=costs,
        scheduling=Scheduling(
            cross_tenant_preemption=draw(st.sampled_from(list(CrossTenantPreemption)))
        ),
        quotas=quotas,
    )
    needed = Resources(
        draw(st.integers(0, 8)) * 250,
        draw(st.integers(0, 8)) * 512,
        draw(st.integers(0, 6)),
    )
    request = AllocationRequest(
        "urgent",
        workers=needed.workers,
        priority=draw(st.sampled_from([HIGH, CRITICAL])),
        servers=tuple(
            draw(st.lists(st.sampled_from(("new", *SERVER_NAMES)), unique=True))
        ),
    )
    return pool, request, needed, draw(TENANTS)


TENANTS = st.sampled_from(("a", "b", None))


@given(pools_and_requests())
def test_the_victims_are_those_the_rule_chooses_among_every_subset(
    case: tuple[PoolView, AllocationRequest, Resources, str | None],
) -> None:
    pool, request, needed, tenant = case
    fits = shortfall(pool, request, needed) is None
    assert fits == fits_without(pool, request, needed, ())
    if fits:
        return  # a request that fits as things are preempts nobody
    chosen = chosen_ids(pool, request, needed, tenant=tenant)
    assert chosen == reference_victims(pool, request, needed, T0, tenant=tenant)
    if chosen and any(pool.reservations[v].tenant != tenant for v in chosen):
        event(f"another tenant preempted ({pool.scheduling.cross_tenant_preemption})")


@given(pools_and_requests())
def test_no_tenant_within_its_quota_loses_to_another_under_over_quota(
    case: tuple[PoolView, AllocationRequest, Resources, str | None],
) -> None:
    """Under over_quota, every victim of another tenant belongs to a tenant
    that held more than its quota, in a dimension the victim holds some of."""
    pool, request, needed, tenant = case
    pool.scheduling = Scheduling()  # a new pool's default: over_quota
    if shortfall(pool, request, needed) is None:
        return  # a request that fits as things are preempts nobody
    found = chosen_ids(pool, request, needed, tenant=tenant)
    assert found == reference_victims(pool, request, needed, T0, tenant=tenant)
    chosen = found or []
    for victim_id in chosen:
        victim = pool.reservations[victim_id]
        if victim.tenant == tenant:
            continue
        assert victim.tenant is not None
        assert victim.tenant in pool.quotas, "a tenant without a quota lost"
        limit = pool.quotas[victim.tenant]
        held = Resources()
        for r in pool.reservations.values():
            if r.tenant == victim.tenant:
                held = held + r.resources
        over = [
            (h, q, v)
            for h, q, v in zip(
                held.as_dict().values(),
                limit.as_dict().values(),
                victim.resources.as_dict().values(),
                strict=True,
            )
            if h > q and v > 0
        ]
        assert over, f"{victim_id} of {victim.tenant} preempted within its quota"
        event("a tenant over its quota preempted by another")


# -- the inputs, through the ledger ---------------------------------------


@pytest.fixture
def ledger(ledger_service: AllocationService) -> Ledger:
    return ledger_service.ledger


def hold(
    ledger: Ledger, clock: ManualClock, job: str, workers: int, priority: Priority
) -> str:
    """An active allocation of `workers`, reserved one second after the last."""
    clock.advance(1)
    result = ledger.request(
        AllocationRequest(job, (), workers, priority=priority, ttl_seconds=3600)
    )
    assert result.allocation.state == AllocationState.ACTIVE
    return result.allocation.allocation_id


@pytest.mark.parametrize("older_lows", [0, 12], ids=["input-A", "input-B"])
def test_the_two_youngest_lows_are_preempted_and_the_normal_keeps_running(
    ledger: Ledger, manual_clock: ManualClock, older_lows: int
) -> None:
    """Input A: a pool of 4; `n` (normal, 2 workers), then two younger `low`
    of 1 worker; `c` (critical, 2 workers) preempts the two lows, not `n`,
    though `n` alone would be the smaller set. Input B: the same with 12
    more, older, 1-worker lows (pool of 16): the same two."""
    workers = 4 + older_lows
    ledger.set_capacity(Resources(1000 * workers, 2048 * workers, workers))
    old = [hold(ledger, manual_clock, f"old-{i}", 1, LOW) for i in range(older_lows)]
    n = hold(ledger, manual_clock, "n", 2, NORMAL)
    lows = [hold(ledger, manual_clock, f"low-{i}", 1, LOW) for i in range(2)]
    manual_clock.advance(1)
    result = ledger.request(
        AllocationRequest("c", (), 2, priority=CRITICAL, ttl_seconds=3600)
    )
    assert result.allocation.state == AllocationState.ACTIVE
    assert sorted(result.preempted) == sorted(lows)
    assert ledger.allocation(n).state == AllocationState.ACTIVE
    assert all(ledger.allocation(a).state == AllocationState.ACTIVE for a in old)


def test_fewest_victims_within_the_lowest_priority_needed(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    """Lows must go (no set without a normal would do only if lows are too
    few): here three 1-worker lows and one 2-worker low; a critical request of
    2 workers takes the single 2-worker low, the fewest, though older."""
    ledger.set_capacity(Resources(5000, 10240, 5))
    big = hold(ledger, manual_clock, "big-low", 2, LOW)
    small = [hold(ledger, manual_clock, f"low-{i}", 1, LOW) for i in range(3)]
    manual_clock.advance(1)
    result = ledger.request(
        AllocationRequest("c", (), 2, priority=CRITICAL, ttl_seconds=3600)
    )
    assert result.preempted == (big,)
    assert all(ledger.allocation(a).state == AllocationState.ACTIVE for a in small)


# -- far more candidates than any subset search could try -------------------------


def test_exact_among_two_thousand_candidates() -> None:
    """2,000 lows of 1 to 3 workers (youngest last) and a request short by 7
    workers: the fewest victims are three; of those sets the youngest is
    a1999 (2 workers), a1997 (3) and a1996 (2), whose oldest is younger than
    that of any other three that make 7. No cutoff: the answer is exact at
    this size."""
    sizes = [1 + (i % 3) for i in range(2000)]  # 1, 2, 3, 1, 2, 3, ...
    reservations = {
        f"a{i:04d}": reservation(f"a{i:04d}", LOW, Resources(0, 0, size), seconds=i)
        for i, size in enumerate(sizes)
    }
    total = sum(sizes)
    pool = PoolView(capacity=Resources(0, 0, total), reservations=reservations)
    needed = Resources(0, 0, 7)
    request = AllocationRequest("urgent", workers=7, priority=CRITICAL)
    assert chosen_ids(pool, request, needed) == ["a1996", "a1997", "a1999"]
    assert reference_among(pool, request, needed, last=9) == [
        "a1996",
        "a1997",
        "a1999",
    ]


def test_exact_when_two_dimensions_are_short_among_many_candidates() -> None:
    """Memory-heavy and worker-heavy lows alternate; the request is short of
    both, so no one kind alone will do. 600 candidates; the answer is the
    youngest of each kind that together cover both."""
    reservations = {}
    for i in range(600):
        heavy_memory = i % 2 == 0
        resources = Resources(0, 8192, 1) if heavy_memory else Resources(0, 512, 4)
        reservations[f"a{i:03d}"] = reservation(f"a{i:03d}", LOW, resources, seconds=i)
    held = Resources()
    for r in reservations.values():
        held = held + r.resources
    pool = PoolView(capacity=held, reservations=reservations)
    needed = Resources(0, 8192, 4)
    request = AllocationRequest("urgent", workers=4, priority=CRITICAL)
    assert chosen_ids(pool, request, needed) == reference_among(
        pool, request, needed, last=8
    )
    assert chosen_ids(pool, request, needed) == ["a598", "a599"]


def reference_among(
    pool: PoolView, request: AllocationRequest, needed: Resources, *, last: int
) -> list[str] | None:
    """The rule by every subset, over the `last` youngest candidates only
    (enough when the answer is known to lie among them)."""
    youngest = sorted(pool.reservations)[-last:]
    few = PoolView(
        capacity=pool.capacity,
        reservations={k: pool.reservations[k] for k in youngest},
    )
    others = Resources()
    for k, r in pool.reservations.items():
        if k not in youngest:
            others = others + r.resources
    few.capacity = pool.capacity - others
    return reference_victims(few, request, needed, T0)
