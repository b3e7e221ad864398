"""One writer process of the contention test: mixed commands, what it was told."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.errors import (
    AllocationNotLiveError,
    ConcurrentUpdateError,
)
from allocation_ledger.domain.values import AllocationRequest


def run(settings_json: str, worker: int, operations: int, out: str) -> None:
    settings = Settings.model_validate_json(settings_json)
    service = open_service(settings)
    ledger = service.ledger
    rng = random.Random(worker)
    told: dict[str, str] = {}
    never_written: list[str] = []
    mine: list[str] = []
    for step in range(operations):
        roll = rng.random()
        try:
            if roll < 0.5 or not mine:
                request_id = f"w{worker}-{step}"
                try:
                    result = ledger.request(
                        AllocationRequest(f"job-{worker}", (), rng.choice((1, 1, 2))),
                        request_id=request_id,
                    )
                except ConcurrentUpdateError:
                    never_written.append(request_id)
                    continue
                allocation = result.allocation
                told[allocation.allocation_id] = allocation.state.value
                if allocation.state.value == "active":
                    mine.append(allocation.allocation_id)
            elif roll < 0.7:
                allocation_id = rng.choice(mine)
                renewed = ledger.renew(allocation_id)
                told[allocation_id] = renewed.allocation.state.value
            else:
                allocation_id = mine.pop(rng.randrange(len(mine)))
                released = ledger.release(allocation_id)
                told[allocation_id] = released.allocation.state.value
        except (ConcurrentUpdateError, AllocationNotLiveError):
            continue
    Path(out).write_text(
        json.dumps(
            {
                "told": told,
                "never_written": never_written,
                "conflicts": ledger.conflicts,
            }
        )
    )
    service.close()


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
