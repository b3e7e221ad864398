"""Two ledgers on one SQLite file: a stale cached pool loses the race and retries."""

from __future__ import annotations

from pathlib import Path

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest, AllocationState


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
