"""Several processes writing to one PostgreSQL ledger never over-commit it,
and, deciding one at a time under the writers' lock, never lose a race."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import init_database, open_service
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.errors import AllocationNotFoundError
from allocation_ledger.domain.values import Resources
from tests.postgres import postgres_schema, postgres_settings

__all__ = ["postgres_schema"]

WRITERS = 4
OPERATIONS = 200


def test_four_writers_on_one_small_pool(postgres_schema: str, tmp_path: Path) -> None:
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    setup = open_service(settings)
    setup.ledger.set_capacity(Resources(4000, 8192, 4))
    setup.close()

    outputs = [tmp_path / f"writer-{n}.json" for n in range(WRITERS)]
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.contention_worker",
                settings.model_dump_json(),
                str(n),
                str(OPERATIONS),
                str(outputs[n]),
            ],
            cwd=Path(__file__).resolve().parent.parent,
        )
        for n in range(WRITERS)
    ]
    for writer in writers:
        assert writer.wait(timeout=300) == 0

    service = open_service(settings)
    try:
        report = audit.verify(service)
        assert report.clean, report.as_dict()
        assert report.allocations > 0
        total_conflicts = 0
        for output in outputs:
            result = json.loads(output.read_text())
            total_conflicts += result["conflicts"]
            for allocation_id, state in result["told"].items():
                seen = service.read_models.allocation(allocation_id)
                assert seen.state == state, (allocation_id, state, seen.state)
            for request_id in result["never_written"]:
                allocation_id = allocation_id_for_request("default", request_id)
                try:
                    service.read_models.allocation(allocation_id)
                except AllocationNotFoundError:
                    continue
                raise AssertionError(f"{request_id} failed yet was written")
        capacity = service.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved.workers <= 4
        # They contended for the one pool, one at a time under the writers'
        # lock (adapters/storage/writer_lock.py): races are lost only in the
        # first second, before each server has seen that the others serve
        # too (RECHECK_SECONDS); without the lock, about a quarter of all
        # commands lost one.
        assert total_conflicts <= WRITERS * OPERATIONS // 20
    finally:
        service.close()
