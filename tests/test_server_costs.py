"""An MCP server's cost is held once per running instance (issue 11).

The catalog says a server's `cpu` and `memory` are "reserved while an
instance runs": the decision that starts an instance reserves its cost in
the pool, and the stop that ends it (idle, reclaimed, failed start) gives it
back; allocations hold only their workers. A request needs its workers plus
the cost of each server it names that does not run yet; idle instances are
reclaimed (stopped) for room, longest idle first, after due leases expire
and before anyone is preempted or queued; a victim set frees a shared
server's cost only when every user of it is in the set.
"""

from __future__ import annotations

from typing import Any

import pytest

from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool import Pool, pool_uuid
from allocation_ledger.domain.values import (
    INSUFFICIENT_CAPACITY,
    QUOTA_EXCEEDED,
    AllocationRequest,
    AllocationState,
    Dimension,
    Priority,
    Rejection,
    Resources,
)
from tests.ledger_support import OpenService, RecordingProvisioner, sequential_ids

GITHUB = Resources(250, 128, 0)
BROWSER = Resources(1_000, 1_024, 0)
WORKER = Resources(1_000, 1_024, 1)


@pytest.fixture
def provisioner() -> RecordingProvisioner:
    return RecordingProvisioner()


@pytest.fixture
def service(
    open_ledger_service: OpenService, provisioner: RecordingProvisioner
) -> AllocationService:
    opened = open_ledger_service(
        provisioner=provisioner, new_allocation_id=sequential_ids()
    )
    opened.ledger.configure_pool(
        "default",
        capacity=Resources(4_000, 8_192, 8),
        worker_size=WORKER,
        server_costs={"github": GITHUB, "browser": BROWSER},
        idle_timeout_seconds=60,
    )
    return opened


@pytest.fixture
def ledger(service: AllocationService) -> Ledger:
    return service.ledger


def ask(
    ledger: Ledger,
    job: str,
    servers: tuple[str, ...] = (),
    *,
    workers: int = 0,
    priority: Priority = Priority.NORMAL,
    ttl: int = 3600,
) -> str:
    result = ledger.request(
        AllocationRequest(job, servers, workers, priority=priority, ttl_seconds=ttl)
    )
    return result.allocation.allocation_id


def pool_events(ledger: Ledger, kind: type) -> list:  # type: ignore[type-arg]
    return [e for e in ledger.events.get(pool_uuid("default")) if isinstance(e, kind)]


def test_allocations_sharing_a_server_hold_its_cost_once(
    ledger: Ledger, service: AllocationService
) -> None:
    for i in range(3):
        ask(ledger, f"job-{i}", ("github",), workers=1)
    pool = ledger.pool("default")
    assert pool.reserved == Resources(3_250, 3_200, 3)
    assert {r.resources for r in pool.reservations.values()} == {WORKER}
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.reserved == pool.reserved
    assert capacity.servers["github"].cost == GITHUB
    assert audit.verify(service).clean


def test_a_release_frees_its_workers_and_the_last_user_leaves_the_instance_idle(
    ledger: Ledger, manual_clock: ManualClock, provisioner: RecordingProvisioner
) -> None:
    first = ask(ledger, "first", ("github",), workers=1)
    second = ask(ledger, "second", ("github",), workers=1)
    assert ledger.release(first).result.freed == WORKER
    released = ledger.release(second).result
    assert released.freed == WORKER  # the instance's cost stays with it
    assert ledger.pool("default").reserved == GITHUB  # idle, still running
    manual_clock.advance(61)
    assert [s.name for s in ledger.stop_idle_servers().stopped] == ["github"]
    assert ledger.pool("default").reserved == Resources()
    assert provisioner.stopped == [("github", 9000)]


def test_a_request_needs_the_cost_only_of_servers_that_do_not_run(
    ledger: Ledger,
) -> None:
    """browser runs (1 core) for `holder`; 3 workers fill the rest but for
    0 cores: browser again fits, github (0.25 core, not running) does not;
    the refusal counts exactly its workers and github's cost."""
    ask(ledger, "holder", ("browser",))
    ask(ledger, "filler", workers=3)
    assert ledger.pool("default").available.cpu_millicores == 0
    attached = ledger.request(AllocationRequest("again", ("browser",)))
    assert attached.allocation.state is AllocationState.ACTIVE
    refused = ledger.request(AllocationRequest("new", ("browser", "github"), 0))
    assert refused.allocation.rejection == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.CPU, 250, 0
    )


def test_idle_instances_are_reclaimed_before_anyone_is_preempted(
    ledger: Ledger, manual_clock: ManualClock, provisioner: RecordingProvisioner
) -> None:
    """browser idle (1 core) and a low allocation of 1 worker: a critical
    request for 1 core more than is free stops the idle browser, preempts
    nobody, and the process provisioner is told to stop it."""
    ask(ledger, "low", workers=2, priority=Priority.LOW)
    used = ask(ledger, "used-browser", ("browser",))
    ledger.release(used)
    manual_clock.advance(5)
    assert ledger.pool("default").reserved == Resources(3_000, 3_072, 2)
    result = ledger.request(
        AllocationRequest("urgent", (), 2, priority=Priority.CRITICAL)
    )
    assert result.allocation.state is AllocationState.ACTIVE
    assert result.preempted == ()
    stops = pool_events(ledger, Pool.ServerStopped)
    assert [(e.name, e.reason, e.cost) for e in stops] == [
        ("browser", "reclaimed", BROWSER.as_dict())
    ]
    assert provisioner.stopped == [("browser", 9000)]
    assert "browser" not in ledger.pool("default").servers


def test_only_as_many_idle_instances_as_needed_are_reclaimed_longest_idle_first(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    for job, server in (("a", "github"), ("b", "browser")):
        ledger.release(ask(ledger, job, (server,)))
        manual_clock.advance(5)
    ask(ledger, "filler", workers=2)  # 2.75 cores free + 1.25 idle
    ledger.request(AllocationRequest("needs-one-more", (), 1))  # 0.75 free now
    result = ledger.request(AllocationRequest("needs-a-core", (), 1))
    assert result.allocation.state is AllocationState.ACTIVE
    # github (idle longest, 0.25) is not enough; browser (1 core) is needed too
    stops = pool_events(ledger, Pool.ServerStopped)
    assert [(e.name, e.reason) for e in stops] == [
        ("github", "reclaimed"),
        ("browser", "reclaimed"),
    ]


def test_due_leases_expire_before_idle_instances_are_reclaimed(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    due = ask(ledger, "due", workers=3, ttl=60)
    ledger.release(ask(ledger, "idle", ("browser",)))
    manual_clock.advance(61)
    result = ledger.request(AllocationRequest("late", (), 3))
    assert result.expired_first == (due,)
    assert pool_events(ledger, Pool.ServerStopped) == []  # browser left idle
    assert ledger.pool("default").servers["browser"].references == 0


def test_a_victim_set_frees_a_shared_server_only_with_its_last_user(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    """Pool of 4 cores: `a` (low, browser, no workers) and `b` (low, 1
    worker, browser) share browser (1 core); `n` (normal, 2 workers). A
    critical request of 2 workers takes {a, b}: b's worker and, with its
    every user gone, browser's core; b alone frees 1 core, too little, and
    a normal victim would raise the highest priority taken."""
    a = ask(ledger, "a", ("browser",), priority=Priority.LOW)
    manual_clock.advance(1)
    b = ask(ledger, "b", ("browser",), workers=1, priority=Priority.LOW)
    manual_clock.advance(1)
    n = ask(ledger, "n", workers=2, priority=Priority.NORMAL)
    manual_clock.advance(1)
    result = ledger.request(AllocationRequest("c", (), 2, priority=Priority.CRITICAL))
    assert result.allocation.state is AllocationState.ACTIVE
    assert sorted(result.preempted) == sorted([a, b])
    assert ledger.allocation(n).state is AllocationState.ACTIVE
    stops = pool_events(ledger, Pool.ServerStopped)
    assert [(e.name, e.reason) for e in stops] == [("browser", "reclaimed")]


def test_a_quota_counts_a_tenants_workers_not_shared_instances(
    ledger: Ledger,
) -> None:
    ledger.set_quota("team", Resources(1_000, 1_024, 1))
    granted = ledger.request(AllocationRequest("one", ("browser",), 1), tenant="team")
    assert granted.allocation.state is AllocationState.ACTIVE  # browser: the pool's
    refused = ledger.request(AllocationRequest("two", (), 1), tenant="team")
    assert refused.allocation.rejection == Rejection(
        QUOTA_EXCEEDED, Dimension.WORKERS, 1, 0
    )


class SlowProvisioner(RecordingProvisioner):
    """Provisions after the request's transaction, as the process provisioner
    does (nothing instant)."""

    def instant_endpoints(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_a_failed_start_gives_the_instance_cost_back(
    open_ledger_service: OpenService,
) -> None:
    provisioner = SlowProvisioner()
    ledger = open_ledger_service(provisioner=provisioner).ledger
    ledger.configure_pool(
        "default", server_costs={"browser": BROWSER, "github": GITHUB}
    )
    ask(ledger, "running", ("browser",))
    provisioner.fail_provision = RuntimeError("no such command")
    result = ledger.request(AllocationRequest("broken", ("github", "browser"), 1))
    assert result.allocation.state is AllocationState.FAILED
    # github, started for it, is stopped with its cost; browser keeps running
    assert ledger.pool("default").reserved == BROWSER
    stops = pool_events(ledger, Pool.ServerStopped)
    assert [(e.name, e.reason, e.cost) for e in stops] == [
        ("github", "start_failed", GITHUB.as_dict())
    ]


def test_a_dry_run_that_would_reclaim_stops_nothing(
    ledger: Ledger, provisioner: RecordingProvisioner
) -> None:
    ask(ledger, "filler", workers=3)
    ledger.release(ask(ledger, "idle", ("browser",)))
    result = ledger.request(AllocationRequest("trial", (), 1), dry_run=True)
    assert result.dry_run and result.allocation.state is AllocationState.PENDING
    assert provisioner.stopped == []
    assert "browser" in ledger.pool("default").servers
    assert pool_events(ledger, Pool.ServerStopped) == []
