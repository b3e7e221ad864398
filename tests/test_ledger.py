"""The Ledger's commands, on the in-memory store and on a SQLite file.

The original in-memory resource manager's behaviours are the cases, with its
bugs fixed: releasing a failed allocation, ports never freed, idle servers
never stopped, worker endpoints colliding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import DomainEvent
from eventsourcing.utils import resolve_topic

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.actors import SWEEPER_ACTOR
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    AllocationNotLiveError,
    AllocationStateError,
    IdempotencyConflictError,
    InvalidRequestError,
    LeaseNotDueError,
    PoolExistsError,
    PoolNotFoundError,
    ProvisioningError,
)
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.registry import PoolRegistry
from allocation_ledger.domain.values import (
    INSUFFICIENT_CAPACITY,
    AllocationRequest,
    AllocationState,
    Dimension,
    Priority,
    Rejection,
    Resources,
)
from tests.ledger_support import (
    OpenService,
    RecordingProvisioner,
    last_position,
    sequential_ids,
    stored_events,
)

DEFAULT_TOTAL = Resources(16_000, 32_768, 10)


@pytest.fixture
def provisioner() -> RecordingProvisioner:
    return RecordingProvisioner()


@pytest.fixture
def service(
    open_ledger_service: OpenService, provisioner: RecordingProvisioner
) -> AllocationService:
    return open_ledger_service(
        provisioner=provisioner, new_allocation_id=sequential_ids()
    )


@pytest.fixture
def ledger(service: AllocationService) -> Ledger:
    return service.ledger


def request(
    ledger: Ledger,
    job_id: str = "job",
    servers: tuple[str, ...] = (),
    workers: int = 0,
    **kwargs: Any,
) -> Allocation:
    """Request and return the allocation as the command left it."""
    options = {k: kwargs.pop(k) for k in ("pool", "request_id", "actor") if k in kwargs}
    made = ledger.request(
        AllocationRequest(job_id, servers, workers=workers, **kwargs), **options
    )
    return made.allocation


def reserved(ledger: Ledger, pool: str = "default") -> Resources:
    return ledger.pool(pool).reserved


# -- requests that fit: capacity arithmetic and endpoints ------------------------------


def test_a_request_that_fits_is_active_at_once_with_endpoints(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    allocation = request(ledger, "job-1", ("github",), workers=2, ttl_seconds=600)
    assert allocation.state is AllocationState.ACTIVE
    assert allocation.endpoints.workers == {
        f"{allocation.allocation_id}-worker-0": "http://localhost:8000",
        f"{allocation.allocation_id}-worker-1": "http://localhost:8001",
    }
    assert allocation.endpoints.servers == {"github": "http://localhost:9000"}
    assert allocation.activated_at == manual_clock.now()
    assert allocation.expires_at == manual_clock.advance(600)
    assert ledger.allocation(allocation.allocation_id).state is AllocationState.ACTIVE


def test_capacity_arithmetic_of_the_default_pool(
    ledger: Ledger, service: AllocationService
) -> None:
    first = request(ledger, workers=3)
    assert reserved(ledger) == Resources(3_000, 6_144, 3)
    second = request(ledger, workers=7)
    assert reserved(ledger) == Resources(10_000, 20_480, 10)
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.total == DEFAULT_TOTAL
    assert capacity.available == Resources(6_000, 12_288, 0)
    assert capacity.live_allocations == 2
    ledger.release(first.allocation_id)
    assert reserved(ledger) == Resources(7_000, 14_336, 7)
    ledger.release(second.allocation_id)
    assert reserved(ledger) == Resources()
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.available == DEFAULT_TOTAL
    assert capacity.live_allocations == 0


def test_mcp_servers_cost_nothing_unless_configured_per_name(ledger: Ledger) -> None:
    request(ledger, servers=("github", "browser"))
    assert reserved(ledger) == Resources()
    ledger.configure_pool("default", server_costs={"slack": Resources(500, 1_024, 0)})
    allocation = request(ledger, servers=("slack", "github"), workers=1)
    assert allocation.resources == Resources(1_000, 2_048, 1)  # its worker
    assert reserved(ledger) == Resources(1_500, 3_072, 1)  # and slack's instance
    second = request(ledger, servers=("slack",), workers=1)
    assert second.resources == Resources(1_000, 2_048, 1)
    assert reserved(ledger) == Resources(2_500, 5_120, 2)  # slack counted once


# -- rejections: the reason's facts ----------------------------------------------------


def assert_rejected_and_nothing_reserved(
    ledger: Ledger, allocation: Allocation, expected: Rejection, before: Resources
) -> None:
    assert allocation.state is AllocationState.FAILED
    assert allocation.rejection == expected
    assert allocation.workers == []
    assert allocation.servers == []
    assert reserved(ledger) == before
    assert ledger.allocation(allocation.allocation_id).rejection == expected


def test_too_many_workers_is_rejected_with_the_numbers(ledger: Ledger) -> None:
    request(ledger, workers=4)
    before = reserved(ledger)
    position = last_position(ledger)
    allocation = request(ledger, "big", workers=10)
    assert_rejected_and_nothing_reserved(
        ledger,
        allocation,
        Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 10, 6),
        before,
    )
    # Recorded, but as the allocation's story only: the pool is untouched.
    written = [type(e.event) for e in stored_events(ledger, position)]
    assert written == [Allocation.Requested, Allocation.Rejected]


def test_too_much_cpu_is_rejected_with_the_numbers(ledger: Ledger) -> None:
    ledger.set_capacity(Resources(2_000, 32_768, 10))
    allocation = request(ledger, workers=3)
    assert_rejected_and_nothing_reserved(
        ledger,
        allocation,
        Rejection(INSUFFICIENT_CAPACITY, Dimension.CPU, 3_000, 2_000),
        Resources(),
    )


def test_too_much_memory_is_rejected_with_the_numbers(ledger: Ledger) -> None:
    ledger.set_capacity(Resources(16_000, 4_096, 10))
    request(ledger, workers=1)
    allocation = request(ledger, workers=2)
    assert_rejected_and_nothing_reserved(
        ledger,
        allocation,
        Rejection(INSUFFICIENT_CAPACITY, Dimension.MEMORY, 4_096, 2_048),
        Resources(1_000, 2_048, 1),
    )


def test_no_free_mcp_port_is_rejected_with_the_numbers(ledger: Ledger) -> None:
    for batch in range(4):
        names = tuple(f"server-{batch * 25 + i}" for i in range(25))
        assert request(ledger, servers=names).state is AllocationState.ACTIVE
    pool = ledger.pool("default")
    assert sorted(s.port for s in pool.servers.values()) == list(range(9000, 9100))
    allocation = request(ledger, servers=("server-1", "one-too-many"))
    assert_rejected_and_nothing_reserved(
        ledger,
        allocation,
        Rejection(INSUFFICIENT_CAPACITY, Dimension.MCP_PORTS, 1, 0),
        Resources(),
    )
    assert "one-too-many" not in ledger.pool("default").servers
    # A running server is shared without a new port.
    shared = request(ledger, servers=("server-99",))
    assert shared.endpoints.servers == {"server-99": "http://localhost:9099"}


# -- MCP servers: sharing, idling, stopping --------------------------------------------


def test_a_running_mcp_server_is_reused_with_its_port_and_counted(
    ledger: Ledger, service: AllocationService
) -> None:
    first = request(ledger, "a", ("github",))
    second = request(ledger, "b", ("github", "slack"))
    assert first.endpoints.servers["github"] == "http://localhost:9000"
    assert second.endpoints.servers == {
        "github": "http://localhost:9000",
        "slack": "http://localhost:9001",
    }
    assert [s.started for s in second.servers] == [False, True]
    assert ledger.pool("default").servers["github"].references == 2
    ledger.release(first.allocation_id)
    assert ledger.pool("default").servers["github"].references == 1
    ledger.release(second.allocation_id)
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.servers["github"].references == 0
    assert capacity.servers["github"].status == "idle"


def test_idle_servers_stop_after_the_idle_timeout_and_free_their_port(
    ledger: Ledger,
    service: AllocationService,
    manual_clock: ManualClock,
    provisioner: RecordingProvisioner,
) -> None:
    used = request(ledger, "a", ("github", "slack"))
    manual_clock.advance(50)
    ledger.release(used.allocation_id)
    manual_clock.advance(299)
    position = last_position(ledger)
    assert ledger.stop_idle_servers().stopped == ()
    assert last_position(ledger) == position
    manual_clock.advance(1)
    result = ledger.stop_idle_servers()
    assert sorted((s.name, s.port) for s in result.stopped) == [
        ("github", 9000),
        ("slack", 9001),
    ]
    assert sorted(provisioner.stopped) == [("github", 9000), ("slack", 9001)]
    assert ledger.pool("default").servers == {}
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.servers == {}
    # The ports are free again (the original never freed them).
    again = request(ledger, "b", ("jira",))
    assert again.endpoints.servers == {"jira": "http://localhost:9000"}


def test_a_server_in_use_is_never_stopped(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    request(ledger, "a", ("github",), ttl_seconds=3600)
    manual_clock.advance(1_000)
    assert ledger.stop_idle_servers().stopped == ()
    assert ledger.pool("default").servers["github"].references == 1


def test_an_idle_server_whose_port_is_reclaimed_is_stopped_by_the_provisioner(
    ledger: Ledger, provisioner: RecordingProvisioner
) -> None:
    first = request(ledger, servers=tuple(f"server-{i}" for i in range(25)))
    for batch in range(1, 4):
        request(ledger, servers=tuple(f"server-{batch * 25 + i}" for i in range(25)))
    ledger.release(first.allocation_id)
    newcomer = request(ledger, servers=("newcomer",))
    assert newcomer.endpoints.servers == {"newcomer": "http://localhost:9000"}
    assert "server-0" not in ledger.pool("default").servers
    assert ("server-0", 9000) in provisioner.stopped


# -- release ---------------------------------------------------------------------------


def test_a_release_gives_everything_back_and_reports_it(
    ledger: Ledger, manual_clock: ManualClock, provisioner: RecordingProvisioner
) -> None:
    allocation = request(ledger, workers=2, servers=("github",))
    manual_clock.advance(90)
    outcome = ledger.release(allocation.allocation_id, actor="bob")
    assert outcome.result.status == "released"
    assert outcome.result.freed == Resources(2_000, 4_096, 2)
    assert outcome.result.released_at == manual_clock.now()
    assert outcome.result.duration_seconds == 90.0
    assert outcome.allocation.state is AllocationState.RELEASED
    assert provisioner.deprovisioned == [allocation.allocation_id]
    assert reserved(ledger) == Resources()
    assert ledger.pool("default").worker_ports == set()


def test_releasing_twice_says_already_released_and_writes_nothing(
    ledger: Ledger, manual_clock: ManualClock, provisioner: RecordingProvisioner
) -> None:
    allocation = request(ledger, workers=2)
    first = ledger.release(allocation.allocation_id)
    position = last_position(ledger)
    manual_clock.advance(10)
    second = ledger.release(allocation.allocation_id)
    assert second.result.status == "already_released"
    assert second.result.freed == Resources()
    assert second.result.released_at == first.result.released_at
    assert second.position is None
    assert last_position(ledger) == position
    assert provisioner.deprovisioned == [allocation.allocation_id]
    assert reserved(ledger) == Resources()


def test_releasing_an_expired_allocation_says_already_released(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    allocation = request(ledger, workers=1, ttl_seconds=60)
    manual_clock.advance(60)
    ledger.expire_due()
    position = last_position(ledger)
    outcome = ledger.release(allocation.allocation_id)
    assert outcome.result.status == "already_released"
    assert outcome.allocation.state is AllocationState.EXPIRED
    assert last_position(ledger) == position


def test_releasing_a_rejected_allocation_says_failed_and_changes_nothing(
    ledger: Ledger, service: AllocationService
) -> None:
    request(ledger, workers=4)
    rejected = request(ledger, workers=10)
    position = last_position(ledger)
    outcome = ledger.release(rejected.allocation_id)
    assert outcome.result.status == "failed"
    assert outcome.result.freed == Resources()
    assert outcome.allocation.state is AllocationState.FAILED
    assert last_position(ledger) == position
    # The original drove its active count to -1 here.
    assert reserved(ledger) == Resources(4_000, 8_192, 4)
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.live_allocations == 1
    assert capacity.reserved.workers == 4


# -- provisioning failures -------------------------------------------------------------


def test_a_provisioner_that_raises_leaves_the_allocation_failed_and_capacity_back(
    ledger: Ledger, service: AllocationService, provisioner: RecordingProvisioner
) -> None:
    provisioner.fail_provision = RuntimeError("host unreachable")
    allocation = request(ledger, workers=3, servers=("github",))
    assert allocation.state is AllocationState.FAILED
    assert allocation.error == "host unreachable"
    assert reserved(ledger) == Resources()
    assert ledger.pool("default").worker_ports == set()
    assert ledger.pool("default").servers["github"].references == 0
    view = service.read_models.allocation(allocation.allocation_id)
    assert view.state == "failed"
    assert view.error == "host unreachable"
    position = last_position(ledger)
    outcome = ledger.release(allocation.allocation_id)
    assert outcome.result.status == "failed"
    assert last_position(ledger) == position
    provisioner.fail_provision = None
    assert request(ledger, workers=10).state is AllocationState.ACTIVE


def test_a_deprovision_failure_leaves_the_allocation_releasing(
    ledger: Ledger, service: AllocationService, provisioner: RecordingProvisioner
) -> None:
    allocation = request(ledger, workers=2)
    provisioner.fail_deprovision = RuntimeError("worker did not stop")
    with pytest.raises(ProvisioningError) as raised:
        ledger.release(allocation.allocation_id)
    assert raised.value.allocation_id == allocation.allocation_id
    assert "worker did not stop" in str(raised.value)
    assert ledger.allocation(allocation.allocation_id).state is (
        AllocationState.RELEASING
    )
    assert service.read_models.allocation(allocation.allocation_id).state == (
        "releasing"
    )
    assert reserved(ledger) == Resources(2_000, 4_096, 2)
    with pytest.raises(AllocationStateError):
        ledger.renew(allocation.allocation_id)
    provisioner.fail_deprovision = None
    outcome = ledger.release(allocation.allocation_id)
    assert outcome.result.status == "released"
    assert reserved(ledger) == Resources()


# -- unknown ids -----------------------------------------------------------------------


@pytest.mark.parametrize("unknown", ["alloc-000000000bad", "alloc-nope", "", "x" * 300])
@pytest.mark.parametrize("command", ["release", "renew", "expire", "allocation"])
def test_unknown_ids_are_not_found_and_write_nothing(
    ledger: Ledger, unknown: str, command: str
) -> None:
    request(ledger, workers=1)
    position = last_position(ledger)
    with pytest.raises(AllocationNotFoundError) as raised:
        getattr(ledger, command)(unknown)
    assert raised.value.allocation_id == unknown
    assert last_position(ledger) == position


def test_the_read_model_does_not_find_an_unknown_id(service: AllocationService) -> None:
    with pytest.raises(AllocationNotFoundError):
        service.read_models.allocation("alloc-000000000bad")


# -- expiry ----------------------------------------------------------------------------


def test_an_allocation_whose_ttl_passed_is_expired_and_gives_capacity_back(
    ledger: Ledger,
    service: AllocationService,
    manual_clock: ManualClock,
    provisioner: RecordingProvisioner,
) -> None:
    allocation = request(ledger, workers=2, servers=("github",), ttl_seconds=60)
    manual_clock.advance(59)
    assert ledger.expire_due().expired == ()
    with pytest.raises(LeaseNotDueError) as raised:
        ledger.expire(allocation.allocation_id)
    assert raised.value.expires_at == allocation.expires_at
    manual_clock.advance(1)
    sweep = ledger.expire_due()
    assert sweep.expired == (allocation.allocation_id,)
    assert ledger.allocation(allocation.allocation_id).state is AllocationState.EXPIRED
    assert reserved(ledger) == Resources()
    assert ledger.pool("default").servers["github"].references == 0
    assert provisioner.deprovisioned == [allocation.allocation_id]
    view = service.read_models.allocation(allocation.allocation_id)
    assert view.state == "expired"
    assert view.ended_at == manual_clock.now()
    assert view.last_actor == SWEEPER_ACTOR
    assert ledger.expire_due().expired == ()


def test_expire_due_goes_in_expiry_then_id_order(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    ids = [
        request(ledger, f"job-{ttl}-{n}", workers=1, ttl_seconds=ttl).allocation_id
        for ttl, n in ((120, 0), (60, 1), (120, 2), (3600, 3))
    ]
    manual_clock.advance(120)
    sweep = ledger.expire_due()
    assert sweep.expired == (ids[1], ids[0], ids[2])
    expired_in_log = [
        e.event.originator_id
        for e in stored_events(ledger)
        if isinstance(e.event, Allocation.Expired)
    ]
    assert expired_in_log == [ledger.allocation(i).id for i in sweep.expired]


def test_expiring_one_allocation(ledger: Ledger, manual_clock: ManualClock) -> None:
    allocation = request(ledger, workers=1, ttl_seconds=60)
    manual_clock.advance(61)
    outcome = ledger.expire(allocation.allocation_id)
    assert outcome.allocation.state is AllocationState.EXPIRED
    assert reserved(ledger) == Resources()
    with pytest.raises(AllocationNotLiveError) as raised:
        ledger.expire(allocation.allocation_id)
    assert raised.value.state == "expired"


def test_a_request_that_does_not_fit_first_expires_what_is_due(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    stale = request(ledger, "stale", workers=10, ttl_seconds=60)
    manual_clock.advance(60)
    position = last_position(ledger)
    made = ledger.request(AllocationRequest("fresh", workers=4))
    assert made.allocation.state is AllocationState.ACTIVE
    assert made.expired_first == (stale.allocation_id,)
    assert ledger.allocation(stale.allocation_id).state is AllocationState.EXPIRED
    assert reserved(ledger) == Resources(4_000, 8_192, 4)
    kinds = [type(e.event) for e in stored_events(ledger, position)]
    assert kinds.index(Allocation.Expired) < kinds.index(Allocation.Requested)


def test_a_request_that_fits_leaves_due_allocations_to_the_sweeper(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    stale = request(ledger, "stale", workers=2, ttl_seconds=60)
    manual_clock.advance(60)
    made = ledger.request(AllocationRequest("fresh", workers=4))
    assert made.expired_first == ()
    assert ledger.allocation(stale.allocation_id).state is AllocationState.ACTIVE
    assert ledger.expire_due().expired == (stale.allocation_id,)


def test_expiring_what_is_due_is_kept_even_if_the_request_still_does_not_fit(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    stale = request(ledger, "stale", workers=2, ttl_seconds=60)
    request(ledger, "long", workers=8, ttl_seconds=3600)
    manual_clock.advance(60)
    made = ledger.request(AllocationRequest("big", workers=5))
    assert made.allocation.state is AllocationState.FAILED
    assert made.allocation.rejection == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.WORKERS, 5, 2
    )
    assert made.expired_first == (stale.allocation_id,)
    assert ledger.allocation(stale.allocation_id).state is AllocationState.EXPIRED


def test_allocations_expired_to_make_room_are_deprovisioned(
    ledger: Ledger, manual_clock: ManualClock, provisioner: RecordingProvisioner
) -> None:
    stale = request(ledger, "stale", workers=10, ttl_seconds=60)
    manual_clock.advance(60)
    made = ledger.request(AllocationRequest("fresh", workers=1))
    assert made.expired_first == (stale.allocation_id,)
    assert stale.allocation_id in provisioner.deprovisioned


# -- renewal ---------------------------------------------------------------------------


def test_renewal_moves_the_expiry(
    ledger: Ledger, service: AllocationService, manual_clock: ManualClock
) -> None:
    allocation = request(ledger, workers=1, ttl_seconds=600)
    manual_clock.advance(500)
    renewed = ledger.renew(allocation.allocation_id)
    assert renewed.allocation.expires_at == manual_clock.now() + (
        allocation.expires_at - allocation.activated_at  # type: ignore[operator]
    )
    assert renewed.allocation.renewals == 1
    reservation = ledger.pool("default").reservations[allocation.allocation_id]
    assert reservation.expires_at == renewed.allocation.expires_at
    view = service.read_models.allocation(allocation.allocation_id)
    assert view.expires_at == renewed.allocation.expires_at
    assert view.renewals == 1
    manual_clock.advance(200)  # past the first expiry, before the new one
    assert ledger.expire_due().expired == ()
    longer = ledger.renew(allocation.allocation_id, 7200)
    assert longer.allocation.expires_at == manual_clock.advance(7200)


def test_a_due_allocation_cannot_be_renewed(
    ledger: Ledger, service: AllocationService, manual_clock: ManualClock
) -> None:
    allocation = request(ledger, workers=1, ttl_seconds=60)
    manual_clock.advance(60)
    with pytest.raises(AllocationNotLiveError) as raised:
        ledger.renew(allocation.allocation_id)
    assert raised.value.state == "expired"
    assert ledger.allocation(allocation.allocation_id).state is AllocationState.EXPIRED
    assert reserved(ledger) == Resources()
    assert service.read_models.allocation(allocation.allocation_id).state == ("expired")


def test_a_due_allocation_expired_by_renewal_is_deprovisioned(
    ledger: Ledger, manual_clock: ManualClock, provisioner: RecordingProvisioner
) -> None:
    allocation = request(ledger, workers=1, ttl_seconds=60)
    manual_clock.advance(60)
    with pytest.raises(AllocationNotLiveError):
        ledger.renew(allocation.allocation_id)
    assert allocation.allocation_id in provisioner.deprovisioned


def test_a_released_allocation_cannot_be_renewed(ledger: Ledger) -> None:
    allocation = request(ledger, workers=1)
    ledger.release(allocation.allocation_id)
    position = last_position(ledger)
    with pytest.raises(AllocationNotLiveError) as raised:
        ledger.renew(allocation.allocation_id)
    assert raised.value.state == "released"
    assert last_position(ledger) == position


@pytest.mark.parametrize("ttl", [59, 0, -1, 30 * 24 * 3600 + 1])
def test_renewal_with_a_bad_ttl_is_refused(ledger: Ledger, ttl: int) -> None:
    allocation = request(ledger, workers=1)
    position = last_position(ledger)
    with pytest.raises(InvalidRequestError) as raised:
        ledger.renew(allocation.allocation_id, ttl)
    assert raised.value.field == "ttl_seconds"
    assert last_position(ledger) == position


def test_text_the_store_cannot_write_is_refused_before_anything_is_written(
    ledger: Ledger,
) -> None:
    """A lone surrogate fails UTF-8 encoding; it once failed the write itself."""
    request(ledger, workers=1)
    position, before = last_position(ledger), reserved(ledger)
    with pytest.raises(InvalidRequestError) as raised:
        request(ledger, "job-2", workers=1, request_id="retry-\ud800")
    assert raised.value.field == "request_id"
    assert (last_position(ledger), reserved(ledger)) == (position, before)
    made = request(ledger, "job-2", workers=1, request_id="retry-\U0001f680")
    assert made.state is AllocationState.ACTIVE
    assert reserved(ledger).workers == before.workers + 1


# -- workers: unique ids and ports -----------------------------------------------------


def test_worker_ids_and_ports_are_unique_across_allocations(ledger: Ledger) -> None:
    allocations = [request(ledger, f"job-{n}", workers=3) for n in range(3)]
    ids = [w.worker_id for a in allocations for w in a.workers]
    ports = [w.port for a in allocations for w in a.workers]
    endpoints = [e for a in allocations for e in a.endpoints.workers.values()]
    assert len(set(ids)) == len(ids) == 9
    assert ports == list(range(8000, 8009))
    assert len(set(endpoints)) == 9
    ledger.release(allocations[1].allocation_id)
    later = request(ledger, "later", workers=4)
    assert [w.port for w in later.workers] == [8003, 8004, 8005, 8009]
    live_ports = [
        w.port for a in (allocations[0], allocations[2], later) for w in a.workers
    ]
    assert len(set(live_ports)) == len(live_ports)
    assert not {w.worker_id for w in later.workers} & set(ids)


# -- capacity changes ------------------------------------------------------------------


def test_lowering_capacity_never_evicts_but_refuses_new_requests(
    ledger: Ledger, service: AllocationService
) -> None:
    big = request(ledger, "big", workers=5)
    small = request(ledger, "small", workers=1)
    ledger.set_capacity(Resources(16_000, 32_768, 2))
    assert ledger.allocation(big.allocation_id).state is AllocationState.ACTIVE
    assert ledger.allocation(small.allocation_id).state is AllocationState.ACTIVE
    assert reserved(ledger) == Resources(6_000, 12_288, 6)
    refused = request(ledger, "new", workers=1)
    assert refused.rejection == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.WORKERS, 1, 0
    )
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.total.workers == 2
    assert capacity.reserved.workers == 6
    ledger.release(big.allocation_id)
    assert request(ledger, "new", workers=1).state is AllocationState.ACTIVE
    assert request(ledger, "more", workers=1).state is AllocationState.FAILED


def test_setting_the_same_capacity_writes_nothing(ledger: Ledger) -> None:
    ledger.set_capacity(Resources(8_000, 16_384, 5))
    position = last_position(ledger)
    ledger.set_capacity(Resources(8_000, 16_384, 5))
    assert last_position(ledger) == position


@pytest.mark.parametrize(
    ("capacity", "field"),
    [
        (Resources(-1, 32_768, 10), "cpu"),
        (Resources(16_000, -1, 10), "memory"),
        (Resources(16_000, 32_768, -1), "workers"),
        (Resources(16_000, 32_768, 1_001), "workers"),
    ],
)
def test_an_invalid_capacity_is_refused_and_writes_nothing(
    ledger: Ledger, capacity: Resources, field: str
) -> None:
    request(ledger, workers=1)
    position = last_position(ledger)
    with pytest.raises(InvalidRequestError) as raised:
        ledger.set_capacity(capacity)
    assert raised.value.field == field
    assert last_position(ledger) == position
    assert ledger.pool("default").settings.capacity == DEFAULT_TOTAL


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"worker_size": Resources(-1, 2_048, 1)}, "worker_size"),
        ({"server_costs": {"browser": Resources(0, -1, 0)}}, "server_costs"),
        ({"server_costs": {"browser": Resources(0, 0, 1)}}, "server_costs"),
        ({"idle_timeout_seconds": -1}, "idle_timeout_seconds"),
        ({"capacity": Resources(0, 0, 5_000)}, "workers"),
    ],
)
def test_an_invalid_pool_configuration_is_refused_and_writes_nothing(
    ledger: Ledger, settings: dict[str, Any], field: str
) -> None:
    request(ledger, workers=1)
    position = last_position(ledger)
    with pytest.raises(InvalidRequestError) as raised:
        ledger.configure_pool("default", **settings)
    assert raised.value.field == field
    with pytest.raises(InvalidRequestError):
        ledger.create_pool("gpu", PoolSettings(**settings))
    assert last_position(ledger) == position
    assert ledger.pool_names() == ["default"]


def test_changing_a_server_cost_never_unbalances_what_is_held(
    ledger: Ledger, service: AllocationService, manual_clock: ManualClock
) -> None:
    """A running instance keeps the cost it started with until it stops;
    the next start reserves the new one."""
    ledger.configure_pool(
        "default",
        server_costs={"browser": Resources(500, 1_024)},
        idle_timeout_seconds=60,
    )
    held = request(ledger, servers=("browser",))
    ledger.configure_pool("default", server_costs={"browser": Resources(2_000, 4_096)})
    assert reserved(ledger) == Resources(500, 1_024, 0)
    ledger.release(held.allocation_id)
    assert reserved(ledger) == Resources(500, 1_024, 0)  # idle: still running
    manual_clock.advance(61)
    assert [s.name for s in ledger.stop_idle_servers().stopped] == ["browser"]
    assert reserved(ledger) == Resources()
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.reserved == Resources()
    assert request(ledger, servers=("browser",)).resources == Resources()
    assert reserved(ledger) == Resources(2_000, 4_096)


def test_the_capacity_of_an_unknown_pool_cannot_be_set(ledger: Ledger) -> None:
    with pytest.raises(PoolNotFoundError):
        ledger.set_capacity(Resources(1_000, 1_000, 1), pool="gpu")
    assert last_position(ledger) == 0


# -- pools -----------------------------------------------------------------------------


def test_named_pools_hold_their_own_capacity(ledger: Ledger) -> None:
    created = ledger.create_pool(
        "gpu", PoolSettings(capacity=Resources(8_000, 65_536, 2))
    )
    assert created.created
    with pytest.raises(PoolExistsError):
        ledger.create_pool("gpu")
    on_gpu = request(ledger, workers=2, pool="gpu")
    assert on_gpu.pool == "gpu"
    assert on_gpu.state is AllocationState.ACTIVE
    assert request(ledger, workers=1, pool="gpu").rejection == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.WORKERS, 1, 0
    )
    assert request(ledger, workers=1).state is AllocationState.ACTIVE
    assert reserved(ledger, "gpu") == Resources(2_000, 4_096, 2)
    assert reserved(ledger) == Resources(1_000, 2_048, 1)
    assert ledger.pool_names() == ["gpu", "default"]


# -- request_id idempotency and dry runs -----------------------------------------------


def test_the_same_request_id_and_body_returns_the_same_allocation_and_writes_nothing(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    body = AllocationRequest("job", ("github",), workers=2, metadata={"a": 1})
    first = ledger.request(body, request_id="req-1")
    assert first.allocation.allocation_id == allocation_id_for_request(
        "default", "req-1"
    )
    position = last_position(ledger)
    manual_clock.advance(30)
    again = ledger.request(
        AllocationRequest("job", ("github",), workers=2, metadata={"a": 1}),
        request_id="req-1",
    )
    assert again.replayed
    assert again.position is None
    assert again.allocation.allocation_id == first.allocation.allocation_id
    assert again.allocation.state is AllocationState.ACTIVE
    assert again.allocation.endpoints == first.allocation.endpoints
    assert ledger.recorder.max_notification_id() == position
    assert reserved(ledger) == Resources(2_000, 4_096, 2)


def test_a_retried_rejected_request_stays_rejected_and_writes_nothing(
    ledger: Ledger,
) -> None:
    first = ledger.request(AllocationRequest("job", workers=11), request_id="r")
    assert first.allocation.state is AllocationState.FAILED
    position = last_position(ledger)
    again = ledger.request(AllocationRequest("job", workers=11), request_id="r")
    assert again.replayed
    assert again.allocation.state is AllocationState.FAILED
    assert last_position(ledger) == position


@pytest.mark.parametrize(
    ("changes", "differing"),
    [
        ({"workers": 3}, ["workers"]),
        ({"job_id": "other"}, ["job_id"]),
        ({"servers": ("slack",)}, ["servers"]),
        ({"priority": Priority.HIGH}, ["priority"]),
        ({"ttl_seconds": 60}, ["ttl_seconds"]),
        ({"metadata": {"a": 2}}, ["metadata"]),
        ({"workers": 1, "ttl_seconds": 120}, ["workers", "ttl_seconds"]),
    ],
)
def test_the_same_request_id_with_another_body_is_refused_naming_the_fields(
    ledger: Ledger, changes: dict[str, Any], differing: list[str]
) -> None:
    body: dict[str, Any] = {
        "job_id": "job",
        "servers": ("github",),
        "workers": 2,
        "metadata": {"a": 1},
    }
    first = ledger.request(AllocationRequest(**body), request_id="req-1")
    position = last_position(ledger)
    with pytest.raises(IdempotencyConflictError) as raised:
        ledger.request(AllocationRequest(**{**body, **changes}), request_id="req-1")
    assert raised.value.differing == differing
    assert raised.value.request_id == "req-1"
    assert raised.value.allocation_id == first.allocation.allocation_id
    for name in differing:
        assert name in str(raised.value)
    assert last_position(ledger) == position


def test_a_request_id_is_scoped_to_its_pool(ledger: Ledger) -> None:
    ledger.create_pool("gpu")
    body = AllocationRequest("job", workers=1)
    here = ledger.request(body, request_id="req-1")
    there = ledger.request(body, request_id="req-1", pool="gpu")
    assert here.allocation.allocation_id != there.allocation.allocation_id
    assert not there.replayed


def test_a_dry_run_says_what_would_happen_and_writes_nothing(ledger: Ledger) -> None:
    assert last_position(ledger) == 0
    trial = ledger.request(
        AllocationRequest("job", ("github",), workers=2), dry_run=True
    )
    assert trial.dry_run
    assert trial.position is None
    assert trial.allocation.state is AllocationState.PENDING
    assert [w.port for w in trial.allocation.workers] == [8000, 8001]
    assert trial.allocation.servers[0].port == 9000
    assert ledger.recorder.max_notification_id() is None
    with pytest.raises(AllocationNotFoundError):
        ledger.allocation(trial.allocation.allocation_id)
    real = request(ledger, "job", ("github",), workers=2)
    assert [w.port for w in real.workers] == [8000, 8001]


def test_a_dry_run_that_does_not_fit_gives_the_reason_and_writes_nothing(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    stale = request(ledger, "stale", workers=8, ttl_seconds=60)
    manual_clock.advance(120)
    position = last_position(ledger)
    trial = ledger.request(AllocationRequest("job", workers=11), dry_run=True)
    assert trial.allocation.state is AllocationState.FAILED
    assert trial.allocation.rejection == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.WORKERS, 11, 10
    )
    assert last_position(ledger) == position
    # Not even the due allocation was expired: a dry run writes nothing.
    assert ledger.allocation(stale.allocation_id).state is AllocationState.ACTIVE
    assert reserved(ledger) == Resources(8_000, 16_384, 8)


def test_a_dry_run_with_a_used_request_id_is_refused_naming_dry_run(
    ledger: Ledger,
) -> None:
    # What was recorded under the request_id is a real request; a dry run is
    # not a retry of it (docs/tools.md, "Retries").
    first = ledger.request(AllocationRequest("job", workers=1), request_id="r")
    position = last_position(ledger)
    with pytest.raises(IdempotencyConflictError) as raised:
        ledger.request(
            AllocationRequest("job", workers=1), request_id="r", dry_run=True
        )
    assert raised.value.differing == ["dry_run"]
    assert raised.value.allocation_id == first.allocation.allocation_id
    assert last_position(ledger) == position


# -- invalid input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "options", "field"),
    [
        ({"job_id": ""}, {}, "job_id"),
        ({"job_id": " padded "}, {}, "job_id"),
        ({"job_id": "j" * 201}, {}, "job_id"),
        ({"servers": ("Git Hub",)}, {}, "mcp_servers"),
        ({"servers": ("github", "github")}, {}, "mcp_servers"),
        ({"ttl_seconds": 59}, {}, "ttl_seconds"),
        ({"workers": -1}, {}, "workers"),
        ({"priority": "urgent"}, {}, "priority"),
        ({"metadata": {"t": object()}}, {}, "metadata"),
        ({"metadata": ["x"]}, {}, "metadata"),
        ({}, {"pool": "Bad Pool"}, "pool"),
        ({}, {"pool": ""}, "pool"),
        ({}, {"request_id": ""}, "request_id"),
        ({}, {"request_id": "r" * 201}, "request_id"),
    ],
)
def test_invalid_input_is_refused_naming_the_field_and_writes_nothing(
    ledger: Ledger, body: dict[str, Any], options: dict[str, Any], field: str
) -> None:
    request(ledger, workers=1)
    position = last_position(ledger)
    with pytest.raises(InvalidRequestError) as raised:
        ledger.request(AllocationRequest(**{"job_id": "job", **body}), **options)
    assert raised.value.field == field
    assert last_position(ledger) == position
    assert reserved(ledger) == Resources(1_000, 2_048, 1)


def test_a_request_for_an_unknown_pool_is_refused_and_writes_nothing(
    ledger: Ledger,
) -> None:
    with pytest.raises(PoolNotFoundError) as raised:
        ledger.request(AllocationRequest("job", workers=1), pool="gpu")
    assert raised.value.pool == "gpu"
    assert "gpu" in str(raised.value)
    assert last_position(ledger) == 0


# -- events: time, actor, topics -------------------------------------------------------


def test_every_event_carries_the_clock_time_and_the_actor(
    ledger: Ledger, manual_clock: ManualClock
) -> None:
    ledger.create_pool("gpu", actor="admin")
    steps: list[tuple[int, int, object, str]] = []

    def step(actor: str, command: Callable[[], object]) -> None:
        before = last_position(ledger)
        command()
        steps.append((before, last_position(ledger), manual_clock.now(), actor))

    kept = request(ledger, "kept", workers=1, ttl_seconds=60, pool="gpu")
    manual_clock.advance(5)
    step(
        "alice",
        lambda: ledger.request(
            AllocationRequest("a", ("github",), workers=1), pool="gpu", actor="alice"
        ),
    )
    manual_clock.advance(5)
    step("bob", lambda: ledger.renew(kept.allocation_id, actor="bob"))
    manual_clock.advance(5)
    alices = "alloc-000000000002"  # ids come in order: kept was the first
    assert ledger.allocation(alices).requested_by == "alice"
    step("carol", lambda: ledger.release(alices, actor="carol"))
    manual_clock.advance(5)
    step(
        "ops",
        lambda: ledger.set_capacity(
            Resources(1_000, 1_000, 1), pool="gpu", actor="ops"
        ),
    )
    manual_clock.advance(500)
    step(SWEEPER_ACTOR, ledger.stop_idle_servers)
    step(SWEEPER_ACTOR, ledger.expire_due)
    manual_clock.advance(5)
    step(
        "dave",
        lambda: ledger.request(
            AllocationRequest("d", workers=9), pool="gpu", actor="dave"
        ),
    )
    events = {e.position: e.event for e in stored_events(ledger)}
    for before, after, moment, actor in steps:
        assert after > before, f"{actor}'s command wrote nothing"
        for position in range(before + 1, after + 1):
            event = events[position]
            assert (type(event).__qualname__, event.timestamp, event.actor) == (
                type(event).__qualname__,
                moment,
                actor,
            )
    created = [e for e in events.values() if isinstance(e, Pool.Created)]
    assert [(e.name, e.actor) for e in created] == [("gpu", "admin")]


def test_the_events_of_a_first_request_all_carry_its_actor(ledger: Ledger) -> None:
    request(ledger, servers=("github",), workers=1, actor="alice")
    written = stored_events(ledger)
    actors = {(type(e.event).__qualname__, e.event.actor) for e in written}
    assert {actor for _, actor in actors} == {"alice"}, sorted(actors)


STABLE_TOPICS: dict[type[DomainEvent], str] = {
    Allocation.Requested: "allocation-ledger:allocation:requested",
    Allocation.Rejected: "allocation-ledger:allocation:rejected",
    Allocation.Activated: "allocation-ledger:allocation:activated",
    Allocation.Renewed: "allocation-ledger:allocation:renewed",
    Allocation.ReleaseRequested: "allocation-ledger:allocation:release-requested",
    Allocation.Released: "allocation-ledger:allocation:released",
    Allocation.Expired: "allocation-ledger:allocation:expired",
    Allocation.Failed: "allocation-ledger:allocation:failed",
    Allocation.Queued: "allocation-ledger:allocation:queued",
    Allocation.Granted: "allocation-ledger:allocation:granted",
    Allocation.Preempted: "allocation-ledger:allocation:preempted",
    Pool.Created: "allocation-ledger:pool:created",
    Pool.CapacityChanged: "allocation-ledger:pool:capacity-changed",
    Pool.Reconfigured: "allocation-ledger:pool:reconfigured",
    Pool.PortsChanged: "allocation-ledger:pool:ports-changed",
    Pool.ServerStarted: "allocation-ledger:pool:server-started",
    Pool.Reserved: "allocation-ledger:pool:reserved",
    Pool.LeaseExtended: "allocation-ledger:pool:lease-extended",
    Pool.Freed: "allocation-ledger:pool:freed",
    Pool.ServerStopped: "allocation-ledger:pool:server-stopped",
    Pool.ServerCharged: "allocation-ledger:pool:server-charged",
    Pool.SchedulingConfigured: "allocation-ledger:pool:scheduling-configured",
    Pool.QuotaSet: "allocation-ledger:pool:quota-set",
    Pool.Enqueued: "allocation-ledger:pool:enqueued",
    Pool.Dequeued: "allocation-ledger:pool:dequeued",
    PoolRegistry.Opened: "allocation-ledger:pool-registry:opened",
    PoolRegistry.PoolRegistered: "allocation-ledger:pool-registry:pool-registered",
    PoolRegistry.PortsChanged: "allocation-ledger:pool-registry:ports-changed",
}


@pytest.mark.parametrize(
    ("event_class", "topic"),
    list(STABLE_TOPICS.items()),
    ids=[c.__qualname__ for c in STABLE_TOPICS],
)
def test_every_event_class_has_a_stable_topic(
    event_class: type[DomainEvent], topic: str
) -> None:
    """Stored history names these topics: they must never change."""
    assert vars(event_class).get("TOPIC") == topic
    assert resolve_topic(topic) is event_class


def test_no_event_class_is_left_without_its_own_topic() -> None:
    """Every event class the domain defines is in the table of stable topics."""
    defined = {
        member
        for aggregate in (Allocation, Pool, PoolRegistry)
        for name, member in vars(aggregate).items()
        if isinstance(member, type)
        and issubclass(member, DomainEvent)
        and name != "Event"
        and "TOPIC" in vars(member)
    }
    assert defined == set(STABLE_TOPICS)


def test_stored_topics_are_the_stable_ones(
    ledger: Ledger, manual_clock: ManualClock, provisioner: RecordingProvisioner
) -> None:
    ledger.create_pool("gpu")
    ledger.configure_pool("gpu", idle_timeout_seconds=60)
    a = request(ledger, servers=("github",), workers=1, ttl_seconds=60)
    b = request(ledger, workers=1)
    request(ledger, workers=11)
    ledger.renew(b.allocation_id)
    ledger.release(b.allocation_id)
    provisioner.fail_provision = RuntimeError("no")
    request(ledger, workers=1)
    manual_clock.advance(1_000)
    ledger.expire_due()
    manual_clock.advance(300)
    ledger.stop_idle_servers()
    ledger.set_capacity(Resources(1_000, 1_000, 1))
    assert ledger.allocation(a.allocation_id).state is AllocationState.EXPIRED
    stored = stored_events(ledger)
    topics = {e.topic for e in stored}
    assert all(t.startswith("allocation-ledger:") for t in topics), topics
    kinds = {type(e.event) for e in stored}
    assert kinds >= {
        Allocation.Requested,
        Allocation.Rejected,
        Allocation.Activated,
        Allocation.Renewed,
        Allocation.ReleaseRequested,
        Allocation.Released,
        Allocation.Expired,
        Allocation.Failed,
        Pool.Created,
        Pool.CapacityChanged,
        Pool.Reconfigured,
        Pool.Reserved,
        Pool.LeaseExtended,
        Pool.Freed,
        Pool.ServerStarted,
        Pool.ServerStopped,
    }


# -- several writers on one SQLite file ------------------------------------------------


@pytest.fixture
def two_services(
    tmp_path: Path, manual_clock: ManualClock
) -> Iterator[tuple[AllocationService, AllocationService]]:
    settings = Settings(store="sqlite", database=tmp_path / "shared.db")
    first = open_service(settings, clock=manual_clock)
    second = open_service(settings, clock=manual_clock)
    yield first, second
    first.close()
    second.close()


def test_two_writers_on_one_file_never_over_commit(
    two_services: tuple[AllocationService, AllocationService],
) -> None:
    first, second = two_services
    assert request(first.ledger, "a", workers=5).state is AllocationState.ACTIVE
    assert request(second.ledger, "b", workers=5).state is AllocationState.ACTIVE
    # The first service's cached pool still shows 5 workers free.
    late = request(first.ledger, "c", workers=1)
    assert late.rejection == Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 1, 0)
    assert first.ledger.pool("default").reserved.workers == 10
    capacity = second.read_models.capacity()
    assert capacity is not None
    assert capacity.reserved.workers == 10


def test_a_sweeper_expires_allocations_made_by_another_process(
    two_services: tuple[AllocationService, AllocationService],
    manual_clock: ManualClock,
) -> None:
    sweeper, other = two_services
    request(sweeper.ledger, "long", workers=1, ttl_seconds=3600)
    short = request(other.ledger, "short", workers=1, ttl_seconds=60)
    manual_clock.advance(61)
    assert sweeper.ledger.expire_due().expired == (short.allocation_id,)


def test_a_sweeper_stops_servers_another_process_left_idle(
    two_services: tuple[AllocationService, AllocationService],
    manual_clock: ManualClock,
) -> None:
    sweeper, other = two_services
    request(sweeper.ledger, "own", workers=1)
    used = request(other.ledger, "other", ("github",))
    other.ledger.release(used.allocation_id)
    manual_clock.advance(400)
    stopped = sweeper.ledger.stop_idle_servers().stopped
    assert [(s.name, s.port) for s in stopped] == [("github", 9000)]


def test_setting_capacity_is_not_ignored_after_another_process_changed_it(
    two_services: tuple[AllocationService, AllocationService],
) -> None:
    first, second = two_services
    small = Resources(8_000, 16_384, 4)
    first.ledger.set_capacity(small)
    second.ledger.set_capacity(DEFAULT_TOTAL)
    first.ledger.set_capacity(small)
    assert first.ledger.pool("default").settings.capacity == small
