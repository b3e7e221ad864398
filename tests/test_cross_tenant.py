"""The cross-tenant preemption setting as recorded: a new pool starts at
`over_quota`; events and snapshots older than the setting read as
`over_quota` too (the events hold outcomes, not the rule); a refusal
records its `preemption` note only when there is one (docs/scheduling.md,
"Preemption across tenants")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from eventsourcing.domain import Snapshot

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.cross_tenant import WITHIN_QUOTA, over_quota
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.pool import Pool, pool_uuid
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.scheduling import (
    CrossTenantPreemption,
    Scheduling,
    validate_scheduling,
)
from allocation_ledger.domain.transcodings import SchedulingAsDict
from allocation_ledger.domain.values import (
    AllocationRequest,
    Dimension,
    Priority,
    QueuePolicy,
    Rejection,
    Resources,
)
from tests.preemption_reference import reservation

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ANY, OVER_QUOTA, NEVER = (
    CrossTenantPreemption.ANY,
    CrossTenantPreemption.OVER_QUOTA,
    CrossTenantPreemption.NEVER,
)


def test_a_new_pool_starts_at_over_quota() -> None:
    pool = Pool.create("default", PoolSettings(), at=T0, actor="local")
    assert pool.scheduling.cross_tenant_preemption is OVER_QUOTA
    created = pool.collect_events()[0]
    assert isinstance(created, Pool.Created)
    assert created.cross_tenant_preemption == "over_quota"


def test_a_created_event_older_than_the_setting_reads_as_over_quota() -> None:
    """An event without the field, as every event written before it."""
    pool = Pool._create(
        Pool.Created,
        id=pool_uuid("old"),
        timestamp=T0,
        actor="local",
        name="old",
        capacity=Resources(4000, 8192, 4).as_dict(),
        worker_size=Resources(1000, 2048, 1).as_dict(),
        server_costs={},
        idle_timeout_seconds=300,
    )
    assert pool.scheduling.cross_tenant_preemption is OVER_QUOTA


def test_scheduling_configured_older_than_the_setting_reads_as_over_quota() -> None:
    pool = Pool.create("default", PoolSettings(), at=T0, actor="local")
    pool.trigger_event(
        Pool.SchedulingConfigured,
        timestamp=T0,
        actor="local",
        queue_policy="backfill",
        aging_seconds=600,
        preemption={"critical": ["low"]},
    )
    assert pool.scheduling == Scheduling(
        queue_policy=QueuePolicy.BACKFILL,
        preemption={"critical": ("low",)},
        cross_tenant_preemption=OVER_QUOTA,
    )
    assert pool.configure_scheduling(
        Scheduling(cross_tenant_preemption=NEVER), at=T0, actor="local"
    )
    configured = pool.collect_events()[-1]
    assert isinstance(configured, Pool.SchedulingConfigured)
    assert configured.cross_tenant_preemption == "never"


def test_a_snapshot_older_than_the_setting_reads_as_over_quota() -> None:
    transcoding = SchedulingAsDict()
    old = {"queue_policy": "strict", "aging_seconds": 600, "preemption": {}}
    assert transcoding.decode(old).cross_tenant_preemption is OVER_QUOTA
    for setting in CrossTenantPreemption:
        scheduling = Scheduling(cross_tenant_preemption=setting)
        assert transcoding.decode(transcoding.encode(scheduling)) == scheduling


def test_an_unknown_setting_is_refused_naming_it() -> None:
    bad = Scheduling(cross_tenant_preemption="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError) as raised:
        validate_scheduling(bad)
    assert raised.value.field == "cross_tenant_preemption"
    assert "over_quota, any or never" in str(raised.value)


def test_a_refusal_records_its_preemption_note_only_when_it_has_one() -> None:
    plain = Rejection("insufficient_capacity", Dimension.WORKERS, 1, 0)
    assert "preemption" not in plain.as_dict()  # as recorded before the note
    noted = Rejection("insufficient_capacity", Dimension.WORKERS, 1, 0, WITHIN_QUOTA)
    assert noted.as_dict()["preemption"] == WITHIN_QUOTA
    assert Rejection.from_dict(noted.as_dict()) == noted
    assert Rejection.from_dict(plain.as_dict()) == plain


def test_over_quota_names_the_dimensions_a_tenant_is_over_in() -> None:
    held = {
        "a1": reservation("a1", Priority.LOW, Resources(2000, 1024, 2), seconds=0),
        "a2": reservation("a2", Priority.LOW, Resources(0, 512, 0), seconds=1),
    }
    held = {k: r.__class__(**{**r.__dict__, "tenant": "a"}) for k, r in held.items()}
    quotas = {"a": Resources(4000, 1024, 1), "b": Resources(0, 0, 0)}
    assert over_quota(held, quotas) == {
        "a": frozenset({Dimension.WORKERS, Dimension.MEMORY})
    }
    assert over_quota(held, {"b": Resources()}) == {}  # a: no quota, never over


def test_a_ledger_pool_keeps_its_setting_across_a_snapshot_and_verifies() -> None:
    """A snapshot carries the setting (through the store's transcoding); the
    audit of such a history is clean."""
    service = open_service(Settings(store="memory"), clock=ManualClock(T0))
    try:
        ledger = service.ledger
        ledger.configure_scheduling(Scheduling(cross_tenant_preemption=NEVER))
        ledger.set_capacity(Resources(2000, 4096, 2))
        for i in range(3):
            made = ledger.request(AllocationRequest(f"j{i}", (), 1), tenant="a")
            ledger.release(made.allocation.allocation_id)
        ledger.request(AllocationRequest("low", (), 2, Priority.LOW), tenant="a")
        refused = ledger.request(
            AllocationRequest("urgent", (), 1, Priority.CRITICAL), tenant="b"
        )
        assert refused.allocation.rejection is not None
        assert (
            refused.allocation.rejection.preemption == "other_tenants_never_preempted"
        )
        pool = ledger.pool("default")
        assert ledger.snapshots is not None
        ledger.snapshots.put([Snapshot.take(pool)])
        [stored] = ledger.snapshots.get(pool_uuid("default"), desc=True, limit=1)
        assert isinstance(stored, Snapshot)
        restored = stored.mutate(None)
        assert isinstance(restored, Pool)
        assert restored.scheduling.cross_tenant_preemption is NEVER
        report = audit.verify(service)
        assert report.clean, report.as_dict()
    finally:
        service.close()
