"""The benchmarks' generated history is a ledger like any other.

`bench/history.py` writes the big logs the rebuild, latency and audit
benchmarks read, straight through the aggregates. A small one here must open,
verify clean (verify streams: most of its allocations ended long before the
end) and answer as the generator says, so the benchmarks never measure a
log the ledger would not write.
"""

from __future__ import annotations

from pathlib import Path

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import open_service
from bench.history import generate


def test_a_generated_history_verifies_clean(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    info = generate(path, events=3_000, live_at_end=5)
    service = open_service(Settings(store="sqlite", database=path))
    try:
        report = audit.verify(service)
        assert report.clean, report.as_dict()
        assert report.events == info.events
        assert report.allocations == info.allocations
        live = {
            v.allocation_id
            for v in audit.capacity_at(service, service.ledger.clock.now()).live
        }
        assert live == set(info.live)
    finally:
        service.close()
