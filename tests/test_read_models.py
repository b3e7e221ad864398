"""The read models: listing filters and pages, read-your-writes, rebuild,
exactly-once catch-up, and persistence across reopening a SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import AllocationNotFoundError, InvalidRequestError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Priority,
    Resources,
)
from allocation_ledger.projections.catchup import Projector
from allocation_ledger.projections.store import (
    InMemoryReadModels,
    ListingQuery,
    ReadModelStore,
)
from allocation_ledger.projections.views import AllocationView, CapacityView
from tests.ledger_support import (
    OpenService,
    RecordingProvisioner,
    last_position,
    sequential_ids,
)


@pytest.fixture
def service(open_ledger_service: OpenService) -> AllocationService:
    return open_ledger_service(new_allocation_id=sequential_ids())


def ask(
    ledger: Ledger,
    job_id: str,
    workers: int = 1,
    servers: tuple[str, ...] = (),
    *,
    pool: str = "default",
    **kwargs: Any,
) -> str:
    made = ledger.request(
        AllocationRequest(job_id, servers, workers=workers, **kwargs), pool=pool
    )
    return made.allocation.allocation_id


def ids(views: Sequence[AllocationView]) -> list[str]:
    return [v.allocation_id for v in views]


def snapshot(store: ReadModelStore) -> tuple[list[AllocationView], list[CapacityView]]:
    return store.list_allocations(ListingQuery()), store.list_capacities()


def replay_into_memory(service: AllocationService) -> InMemoryReadModels:
    fresh = InMemoryReadModels()
    Projector(service.ledger.recorder, service.projector.decode, fresh).catch_up()
    return fresh


def varied_history(service: AllocationService, clock: ManualClock) -> dict[str, str]:
    """Every kind of event, in two pools. Returns the allocation ids by role."""
    ledger = service.ledger
    ledger.create_pool("gpu", PoolSettings(capacity=Resources(8_000, 16_384, 4)))
    made = {
        "active": ask(ledger, "job-x", 2, ("github",), priority=Priority.HIGH),
        "released": ask(ledger, "job-y", 1, ("github", "slack"), priority="low"),
        "on-gpu": ask(ledger, "job-x", 3, pool="gpu"),
        "rejected": ask(ledger, "job-z", 50, priority=Priority.CRITICAL),
        "expired": ask(ledger, "job-y", 1, ttl_seconds=60),
        "renewed": ask(ledger, "job-w", 1, ttl_seconds=60, metadata={"k": [1]}),
    }
    clock.advance(30)
    ledger.renew(made["renewed"], 600)
    ledger.release(made["released"])
    clock.advance(40)
    ledger.expire_due()
    clock.advance(300)
    ledger.stop_idle_servers()
    ledger.set_capacity(Resources(12_000, 32_768, 8))
    return made


# -- listing filters and pages ---------------------------------------------------------


def test_listing_filters_by_state_job_priority_and_pool(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    made = varied_history(service, manual_clock)
    read = service.read_models

    def listed(**filters: Any) -> list[str]:
        return ids(read.allocations(ListingQuery(**filters)))

    everything = [
        made[k]
        for k in ("active", "released", "on-gpu", "rejected", "expired", "renewed")
    ]
    assert listed() == everything
    assert listed(state=AllocationState.ACTIVE) == [
        made["active"],
        made["on-gpu"],
        made["renewed"],
    ]
    assert listed(state=AllocationState.RELEASED) == [made["released"]]
    assert listed(state=AllocationState.FAILED) == [made["rejected"]]
    assert listed(state=AllocationState.EXPIRED) == [made["expired"]]
    assert listed(state=AllocationState.PENDING) == []
    assert listed(job_id="job-x") == [made["active"], made["on-gpu"]]
    assert listed(job_id="job-y") == [made["released"], made["expired"]]
    assert listed(job_id="nobody") == []
    assert listed(priority=Priority.HIGH) == [made["active"]]
    assert listed(priority=Priority.LOW) == [made["released"]]
    assert listed(priority=Priority.CRITICAL) == [made["rejected"]]
    assert listed(priority=Priority.NORMAL) == [
        made["on-gpu"],
        made["expired"],
        made["renewed"],
    ]
    assert listed(pool="gpu") == [made["on-gpu"]]
    assert listed(pool="other") == []
    assert listed(job_id="job-x", pool="default") == [made["active"]]
    assert listed(job_id="job-y", state=AllocationState.EXPIRED) == [made["expired"]]
    assert listed(state=AllocationState.ACTIVE, priority=Priority.HIGH) == [
        made["active"]
    ]


def test_listing_rows_tell_the_allocation_s_story(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    start = manual_clock.now()
    made = varied_history(service, manual_clock)
    read = service.read_models
    active = read.allocation(made["active"])
    assert active.job_id == "job-x"
    assert active.priority == "high"
    assert active.pool == "default"
    assert active.resources == Resources(2_000, 4_096, 2)
    assert [(w.port, w.endpoint) for w in active.workers] == [
        (8000, "http://localhost:8000"),
        (8001, "http://localhost:8001"),
    ]
    assert [(s.name, s.port, s.endpoint) for s in active.servers] == [
        ("github", 9000, "http://localhost:9000")
    ]
    assert active.created_at == active.activated_at == start
    assert active.expires_at == start + timedelta(seconds=3600)
    rejected = read.allocation(made["rejected"])
    assert rejected.rejection == {
        "code": "insufficient_capacity",
        "dimension": "workers",
        "requested": 50,
        "available": 7,
    }
    assert rejected.expires_at is None
    renewed = read.allocation(made["renewed"])
    assert renewed.renewals == 1
    assert renewed.metadata == {"k": [1]}
    assert renewed.expires_at == start + timedelta(seconds=30 + 600)
    released = read.allocation(made["released"])
    assert released.ended_at == start + timedelta(seconds=30)
    assert released.release_requested_at == start + timedelta(seconds=30)


def test_listing_pages_with_after_and_limit(service: AllocationService) -> None:
    made = [ask(service.ledger, f"job-{n % 3}", 1) for n in range(7)]
    read = service.read_models
    pages: list[list[str]] = []
    after = 0
    while True:
        page = read.allocations(ListingQuery(after=after, limit=3))
        if not page:
            break
        pages.append(ids(page))
        after = page[-1].sequence
    assert pages == [made[0:3], made[3:6], made[6:7]]
    filtered = read.allocations(ListingQuery(job_id="job-1", limit=1))
    assert ids(filtered) == [made[1]]
    rest = read.allocations(ListingQuery(job_id="job-1", after=filtered[0].sequence))
    assert ids(rest) == [made[4]]


def test_the_listing_is_in_request_order(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    """Later events of an old allocation do not move it in the listing."""
    first = ask(service.ledger, "a")
    second = ask(service.ledger, "b")
    manual_clock.advance(10)
    service.ledger.renew(first)
    third = ask(service.ledger, "c")
    listed = service.read_models.allocations()
    assert ids(listed) == [first, second, third]
    sequences = [v.sequence for v in listed]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == 3


def test_due_allocations_come_in_expiry_then_id_order(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    later = ask(service.ledger, "later", ttl_seconds=120)
    sooner = ask(service.ledger, "sooner", ttl_seconds=60)
    tied = ask(service.ledger, "tied", ttl_seconds=120)
    ask(service.ledger, "not-due", ttl_seconds=3600)
    released = ask(service.ledger, "released", ttl_seconds=60)
    service.ledger.release(released)
    manual_clock.advance(120)
    due = service.read_models.due(manual_clock.now())
    assert ids(due) == [sooner, later, tied]
    assert ids(service.read_models.due(manual_clock.now(), limit=1)) == [sooner]


@pytest.mark.parametrize(
    "limit",
    [
        0,
        1,
        2,
        -1,
    ],
)
def test_both_stores_answer_a_listing_query_alike(
    tmp_path: Path, manual_clock: ManualClock, limit: int
) -> None:
    service = open_service(
        Settings(store="sqlite", database=tmp_path / "ledger.db"), clock=manual_clock
    )
    try:
        for n in range(3):
            ask(service.ledger, f"job-{n}")
        try:
            query = ListingQuery(limit=limit)
        except (ValueError, InvalidRequestError):
            return  # refused up front: no store can disagree
        sql = service.read_models.allocations(query)
        memory = replay_into_memory(service).list_allocations(query)
        assert ids(memory) == ids(sql)
        if limit >= 0:
            assert len(sql) == min(limit, 3)
    finally:
        service.close()


def test_unfinished_allocations_are_counted_by_pool_and_state(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    made = varied_history(service, manual_clock)
    ledger = service.ledger
    ledger.request(AllocationRequest("job-q", (), 7), wait=True)  # 5 are free

    def listed() -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        for view in service.read_models.allocations():
            if view.state in ("queued", "pending", "active", "releasing"):
                key = (view.pool, view.state)
                counts[key] = counts.get(key, 0) + 1
        return counts

    before = listed()
    assert before == {
        ("default", "active"): 2,
        ("default", "queued"): 1,
        ("gpu", "active"): 1,
    }
    assert service.store.count_unfinished() == before
    ledger.release(made["active"])  # 7 are free: the queued request is granted
    service.read_models.catch_up()
    after = service.store.count_unfinished()
    assert after == listed() == {("default", "active"): 2, ("gpu", "active"): 1}


# -- read-your-writes ------------------------------------------------------------------


def test_queries_see_the_commands_before_them(service: AllocationService) -> None:
    ledger, read = service.ledger, service.read_models
    made = ledger.request(AllocationRequest("job", ("github",), workers=2))
    assert made.position is not None
    assert read.allocation(made.allocation.allocation_id).state == "active"
    assert service.store.position() >= made.position
    capacity = read.capacity()
    assert capacity is not None
    assert capacity.reserved == Resources(2_000, 4_096, 2)
    assert capacity.servers["github"].references == 1
    released = ledger.release(made.allocation.allocation_id)
    assert released.position is not None
    assert read.allocation(made.allocation.allocation_id).state == "released"
    capacity = read.capacity()
    assert capacity is not None
    assert capacity.reserved == Resources()
    assert ids(read.allocations(ListingQuery(state=AllocationState.ACTIVE))) == []


def test_the_default_pool_reads_as_new_before_first_use(
    service: AllocationService,
) -> None:
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.total == Resources(16_000, 32_768, 10)
    assert capacity.available == Resources(16_000, 32_768, 10)
    assert capacity.servers == {}
    assert service.read_models.capacity("gpu") is None
    with pytest.raises(AllocationNotFoundError):
        service.read_models.allocation("alloc-000000000001")


def test_capacities_lists_every_pool(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    varied_history(service, manual_clock)
    capacities = {c.pool: c for c in service.read_models.capacities()}
    assert sorted(capacities) == ["default", "gpu"]
    assert capacities["gpu"].total == Resources(8_000, 16_384, 4)
    assert capacities["gpu"].reserved == Resources(3_000, 6_144, 3)
    assert capacities["default"].total == Resources(12_000, 32_768, 8)
    # active (2 workers) and renewed (1) are live in the default pool.
    assert capacities["default"].reserved == Resources(3_000, 6_144, 3)
    assert capacities["default"].live_allocations == 2
    assert capacities["default"].worker_ports_in_use == 3
    # slack went idle at +30 and stopped at +370; github is still in use.
    assert sorted(capacities["default"].servers) == ["github"]


def test_a_second_service_on_the_same_file_sees_the_first_s_writes(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "shared.db")
    writer = open_service(settings, clock=manual_clock)
    reader = open_service(settings, clock=manual_clock)
    try:
        made = ask(writer.ledger, "job", 2)
        assert reader.read_models.allocation(made).state == "active"
        writer.ledger.release(made)
        assert reader.read_models.allocation(made).state == "released"
        capacity = reader.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved == Resources()
    finally:
        writer.close()
        reader.close()


# -- rebuild and replay ----------------------------------------------------------------


def test_rebuild_gives_rows_equal_to_the_live_ones(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    varied_history(service, manual_clock)
    service.read_models.catch_up()
    live = snapshot(service.store)
    position = service.store.position()
    assert position == last_position(service.ledger)
    assert service.projector.rebuild() == position
    assert snapshot(service.store) == live
    assert snapshot(replay_into_memory(service)) == live


def test_a_rebuild_after_more_commands_still_matches(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    made = varied_history(service, manual_clock)
    service.projector.rebuild()
    service.ledger.release(made["active"])
    ask(service.ledger, "after-rebuild", 2, ("github",))
    service.read_models.catch_up()
    live = snapshot(service.store)
    service.projector.rebuild()
    assert snapshot(service.store) == live
    capacity = service.read_models.capacity()
    assert capacity is not None
    assert capacity.servers["github"].references == 1


# -- exactly once ----------------------------------------------------------------------


class RacedStore:
    """A store that lets someone else commit just before its next commit."""

    def __init__(self, inner: ReadModelStore, before_commit: Callable[[], object]):
        self.inner = inner
        self.before_commit: Callable[[], object] | None = before_commit
        self.results: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.inner, name)
        if name == "commit_documents":  # what catch-up calls on a SQL store
            return lambda **kwargs: self._raced(found, kwargs)
        return found

    def commit(self, **kwargs: Any) -> bool:
        return self._raced(self.inner.commit, kwargs)

    def _raced(self, commit: Callable[..., bool], kwargs: dict[str, Any]) -> bool:
        hook, self.before_commit = self.before_commit, None
        if hook is not None:
            hook()
        done = commit(**kwargs)
        self.results.append(done)
        return done


def test_two_projectors_on_one_store_apply_each_event_once(
    service: AllocationService, manual_clock: ManualClock
) -> None:
    varied_history(service, manual_clock)
    other = Projector(service.ledger.recorder, service.projector.decode, service.store)
    raced = RacedStore(service.store, other.catch_up)
    racing = Projector(
        service.ledger.recorder,
        service.projector.decode,
        raced,
        batch_size=5,
    )
    end = last_position(service.ledger)
    assert racing.catch_up() == end
    assert raced.results[0] is False  # the other projector got there first
    assert service.store.position() == end
    assert snapshot(service.store) == snapshot(replay_into_memory(service))
    capacity = service.store.get_capacity("default")
    assert capacity is not None
    assert capacity.live_allocations == 2


def test_a_commit_from_a_stale_position_writes_nothing(
    service: AllocationService,
) -> None:
    made = ask(service.ledger, "job", 2)
    service.read_models.catch_up()
    position = service.store.position()
    before = snapshot(service.store)
    row = service.store.get_allocation(made)
    assert row is not None
    row.state = "released"
    capacity = service.store.get_capacity("default")
    assert capacity is not None
    capacity.reserved = Resources()
    assert not service.store.commit(
        expected=position - 1,
        position=position + 5,
        allocations=[row],
        capacities=[capacity],
    )
    assert service.store.position() == position
    assert snapshot(service.store) == before


def test_two_services_on_one_file_catch_up_exactly_once(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "shared.db")
    first = open_service(settings, clock=manual_clock)
    second = open_service(settings, clock=manual_clock)
    try:
        varied_history(first, manual_clock)
        raced = RacedStore(second.store, first.read_models.catch_up)
        racing = Projector(
            second.ledger.recorder,
            second.projector.decode,
            raced,
            batch_size=7,
        )
        racing.catch_up()
        assert raced.results[0] is False
        second.read_models.catch_up()
        assert snapshot(second.store) == snapshot(first.store)
        assert snapshot(first.store) == snapshot(replay_into_memory(first))
    finally:
        first.close()
        second.close()


# -- persistence across reopening a SQLite file ----------------------------------------


def test_allocations_and_capacity_survive_reopening_the_file(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "ledger.db")
    provisioner = RecordingProvisioner()
    before = open_service(settings, clock=manual_clock, provisioner=provisioner)
    before.ledger.set_capacity(Resources(8_000, 16_384, 6))
    kept = ask(before.ledger, "kept", 2, ("github",), ttl_seconds=600)
    gone = ask(before.ledger, "gone", 1)
    before.ledger.release(gone)
    rows, capacities = snapshot(before.store)
    events = last_position(before.ledger)
    before.close()

    after = open_service(settings, clock=manual_clock, provisioner=provisioner)
    try:
        assert last_position(after.ledger) == events
        assert snapshot(after.store) == (rows, capacities)
        assert after.read_models.allocation(kept).state == "active"
        assert after.read_models.allocation(gone).state == "released"
        pool = after.ledger.pool("default")
        assert pool.settings.capacity == Resources(8_000, 16_384, 6)
        assert pool.reserved == Resources(2_000, 4_096, 2)
        assert pool.servers["github"].references == 1
        # Commands continue where they stopped.
        more = after.ledger.request(AllocationRequest("more", ("github",), workers=4))
        assert more.allocation.state is AllocationState.ACTIVE
        assert [w.port for w in more.allocation.workers] == [8002, 8003, 8004, 8005]
        assert more.allocation.endpoints.servers == {"github": "http://localhost:9000"}
        refused = after.ledger.request(AllocationRequest("refused", workers=1))
        assert refused.allocation.state is AllocationState.FAILED
        manual_clock.advance(600)
        assert after.ledger.expire_due().expired == (kept,)
        assert after.ledger.release(kept).result.status == "already_released"
        capacity = after.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved == Resources(4_000, 8_192, 4)
        assert capacity.servers["github"].references == 1
    finally:
        after.close()


def test_read_models_resume_from_their_position_after_reopening(
    tmp_path: Path, manual_clock: ManualClock
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "ledger.db")
    before = open_service(settings, clock=manual_clock)
    ask(before.ledger, "seen", 1)
    before.read_models.catch_up()
    seen_position = before.store.position()
    unseen = ask(before.ledger, "unseen", 1)  # written, not yet projected
    assert before.store.position() == seen_position
    before.close()

    after = open_service(settings, clock=manual_clock)
    try:
        assert after.store.position() == seen_position
        assert after.read_models.allocation(unseen).state == "active"
        assert snapshot(after.store) == snapshot(replay_into_memory(after))
    finally:
        after.close()
