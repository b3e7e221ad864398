"""Writes a day-like history on a SQLite file, on a simulated clock.

The same file every run: the clock is simulated, the choices come from a
seeded generator and so do the allocation ids (not random ones), so the
examples in docs/operations.md, made with it, can be run again as shown:

    .venv/bin/python scripts/demo-history.py /tmp/history.db
    ALLOCATION_LEDGER_DATABASE=/tmp/history.db .venv/bin/allocation-ledger usage
"""

from __future__ import annotations

import contextlib
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import AllocationNotLiveError
from allocation_ledger.domain.values import AllocationRequest, Priority, Resources

JOBS = ("research", "review", "triage", "nightly-build", "docs")
SERVERS = ("filesystem", "github", "search", "browser")


def main(path: str) -> None:
    Path(path).unlink(missing_ok=True)
    clock = ManualClock(datetime(2026, 11, 26, 8, 0, tzinfo=UTC))
    ids = random.Random(26)
    service = open_service(
        Settings(store="sqlite", database=Path(path)),
        clock=clock,
        new_allocation_id=lambda: f"alloc-{ids.getrandbits(48):012x}",
    )
    ledger = service.ledger
    rng = random.Random(7)
    live: list[str] = []
    for step in range(240):
        clock.advance(rng.choice((20, 40, 60, 90)))
        if step == 120:
            ledger.set_capacity(Resources(12_000, 24_576, 8), actor="ops")
        if step == 200:
            ledger.set_capacity(Resources(16_000, 32_768, 10), actor="ops")
        roll = rng.random()
        if roll < 0.45 or not live:
            job = rng.choice(JOBS)
            result = ledger.request(
                AllocationRequest(
                    f"{job}-{step}",
                    tuple(rng.sample(SERVERS, rng.randint(0, 2))),
                    workers=rng.choice((1, 1, 2, 3, 4)),
                    priority=rng.choice(list(Priority)),
                    ttl_seconds=rng.choice((300, 600, 1800)),
                ),
                actor=f"agent-{job}",
            )
            if result.allocation.state.is_live:
                live.append(result.allocation.allocation_id)
        elif roll < 0.65:
            with contextlib.suppress(AllocationNotLiveError):
                ledger.renew(rng.choice(live), actor="agent")
        elif roll < 0.9:
            ledger.release(live.pop(rng.randrange(len(live))), actor="agent")
        else:
            ledger.expire_due()
            ledger.stop_idle_servers()
    service.projector.catch_up()
    service.close()
    print(f"wrote a history ending at {clock.now().isoformat()} to {path}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-history.db")
