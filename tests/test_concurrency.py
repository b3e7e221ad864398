"""Two ledgers on one SQLite file: a stale cached pool loses the race and retries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Resources,
)
from tests.ledger_support import OpenService


def test_a_stale_cached_pool_loses_on_its_version_and_the_command_retries(
    tmp_path: Path,
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "shared.db")
    clock = ManualClock()
    first = open_service(settings, clock=clock)
    second = open_service(settings, clock=clock)
    try:
        second.ledger.request(AllocationRequest("job-0", (), 1))
        first.ledger.request(AllocationRequest("job-a", (), 3))
        # second's cached pool still thinks 9 workers are free: its save of a
        # 6-worker reservation conflicts, and the retry decides on a fresh read.
        taken = second.ledger.request(AllocationRequest("job-b", (), 6))
        assert taken.allocation.state is AllocationState.ACTIVE
        assert second.ledger.conflicts == 1
        # first's cache thinks 6 are free; refusing is only ever decided fresh.
        refused = first.ledger.request(AllocationRequest("job-c", (), 1))
        assert refused.allocation.state is AllocationState.FAILED
        assert refused.allocation.rejection is not None
        assert refused.allocation.rejection.available == 0
        pool = first.ledger.pool("default")
        assert pool.reserved.workers == 10
        assert len(pool.reservations) == 3
    finally:
        first.close()
        second.close()


def test_a_server_whose_cached_queue_is_behind_decides_again_on_fresh_reads(
    open_services: OpenService, tmp_path: Path
) -> None:
    """Three servers on one SQLite file: a queued request granted by one
    server is still queued in another's cached pool; that server's release,
    which serves its queue, must not refuse ("cannot grant ... while it is
    active") but decide again on fresh reads (found by a break-it session:
    3 of 3 runs failed)."""
    settings = Settings(store="sqlite", database=tmp_path / "ledger.db")
    first, second, third = (open_services(settings).ledger for _ in range(3))
    first.set_capacity(Resources(16_000, 32_768, 2))
    held = [
        first.request(AllocationRequest(f"h{n}", (), 1)).allocation.allocation_id
        for n in range(2)
    ]
    early = first.request(AllocationRequest("q0", (), 1), wait=True).allocation
    late = second.request(AllocationRequest("q1", (), 1), wait=True).allocation
    assert (early.state, late.state) == ("queued", "queued")

    third.release(held[0])  # grants q0; the second server's cache still queues it
    second.release(held[1])  # grants q1

    assert first.allocation(early.allocation_id).state.value == "active"
    assert first.allocation(late.allocation_id).state.value == "active"


def _granted_elsewhere(tmp_path: Path) -> tuple[Any, Any, str]:
    """Two ledgers on one SQLite file, capacity one worker: the first queues
    "q" behind "a" and caches the pool; the second releases "a", granting
    "q". The first's cached pool still queues "q", while "q" itself is no
    longer in its cache (as after a failed save evicted it): it is read
    from the store, active."""
    settings = Settings(store="sqlite", database=tmp_path / "shared.db")
    clock = ManualClock()
    first = open_service(settings, clock=clock)
    second = open_service(settings, clock=clock)
    first.ledger.set_capacity(Resources(16_000, 32_768, 1))
    held = first.ledger.request(AllocationRequest("a", (), 1)).allocation
    queued = first.ledger.request(AllocationRequest("q", (), 1), wait=True).allocation
    assert queued.state is AllocationState.QUEUED
    second.ledger.release(held.allocation_id)  # grants "q"
    with first.ledger._held():
        first.ledger.forget(allocation_uuid(queued.allocation_id))
    return first, second, queued.allocation_id


def test_a_release_decided_on_a_stale_cached_pool_frees_the_capacity(
    tmp_path: Path,
) -> None:
    """The pool's capacity is given back, not leaked: the first's cached pool
    held no reservation for "q", so freeing it there wrote nothing and only
    the allocation's release was saved (no version conflict to show the
    mistake). Found by running three servers on one SQLite file: the audit
    failed in about one run of three ("pool 'other' reserves ... but its
    live allocations hold ...")."""
    first, second, granted = _granted_elsewhere(tmp_path)
    try:
        first.ledger.release(granted)
        pool = first.ledger.pool("default")
        assert pool.reservations == {}
        assert pool.reserved == Resources()
        assert audit.verify(first).clean
    finally:
        first.close()
        second.close()


def test_a_renewal_decided_on_a_stale_cached_pool_renews(tmp_path: Path) -> None:
    """Not a KeyError ("pool 'default' holds no reservation") reaching the
    caller: the renewal is decided again on fresh reads."""
    first, second, granted = _granted_elsewhere(tmp_path)
    try:
        renewed = first.ledger.renew(granted, 120)
        assert renewed.allocation.state is AllocationState.ACTIVE
        assert audit.verify(first).clean
    finally:
        first.close()
        second.close()
