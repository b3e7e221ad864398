"""A ledger written before the code moved into one package still reads the same.

`fixtures/legacy-ledger.db` was written by the ledger of the old layout and
`fixtures/legacy-answers.json` holds what its MCP tools answered about it then,
at the clock time `now` (see `fixtures/write_legacy_ledger.py`; never regenerate
them). The current code must verify that history clean and answer exactly the
same, from the stored read models and from read models rebuilt from the log.
Every test works on a copy: the committed file is never opened for writing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.clock import ManualClock
from tests.mcp_support import call

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEDGER = FIXTURES / "legacy-ledger.db"
ANSWERS: dict[str, Any] = json.loads((FIXTURES / "legacy-answers.json").read_text())
NOW = datetime.fromisoformat(ANSWERS.pop("now"))  # the clock time they were taken at
COMMAND = Path(sys.executable).parent / "allocation-ledger"


def server(service: AllocationService) -> Any:
    """The MCP server on a service, as the stdio transport builds it."""
    from allocation_ledger.adapters.mcp.server import stdio_server  # may move: fix here

    return stdio_server(service)


@pytest.fixture(scope="module", autouse=True)
def committed_ledger_untouched() -> Iterator[None]:
    """The tests open copies; the committed file stays byte for byte, alone."""
    before = LEDGER.read_bytes()
    yield
    assert LEDGER.read_bytes() == before
    for suffix in ("-wal", "-shm", "-journal"):
        assert not LEDGER.with_name(LEDGER.name + suffix).exists()


@pytest.fixture
def ledger_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "legacy-ledger.db"
    shutil.copyfile(LEDGER, copy)
    return copy


@pytest.fixture
def legacy_service(ledger_copy: Path) -> Iterator[AllocationService]:
    """The copy, opened by the current code at the moment the answers were taken."""
    service = open_service(
        Settings(store="sqlite", database=ledger_copy), clock=ManualClock(NOW)
    )
    try:
        yield service
    finally:
        service.close()


async def answers(service: AllocationService) -> dict[str, Any]:
    """What the MCP tools answer now, in the shape of the recorded answers."""
    ids = ANSWERS["allocations"]
    async with Client(server(service)) as client:
        return {
            "allocations": ids,
            "get_allocation": {
                i: await call(client, "get_allocation", allocation_id=i) for i in ids
            },
            "get_allocation_history": {
                i: await call(client, "get_allocation_history", allocation_id=i)
                for i in ids
            },
            "get_capacity": await call(client, "get_capacity"),
            "list_allocations": await call(client, "list_allocations"),
            "get_usage": await call(client, "get_usage"),
        }


def assert_same_answers(told: dict[str, Any]) -> None:
    """Tool by tool, so that a difference names the tool and the allocation."""
    assert told.keys() == ANSWERS.keys()
    for tool in ("get_allocation", "get_allocation_history"):
        for allocation_id, recorded in ANSWERS[tool].items():
            assert told[tool][allocation_id] == recorded, (tool, allocation_id)
    for tool in ("get_capacity", "list_allocations", "get_usage"):
        assert told[tool] == ANSWERS[tool], tool
    assert told == ANSWERS


def test_the_recorded_answers_cover_every_kind_of_history() -> None:
    states = {a["state"] for a in ANSWERS["get_allocation"].values()}
    assert states >= {"expired", "preempted", "failed", "released", "active"}
    assert len(ANSWERS["allocations"]) == len(set(ANSWERS["allocations"])) == 7


@pytest.mark.slow
def test_verify_finds_the_legacy_history_clean(ledger_copy: Path) -> None:
    assert COMMAND.exists(), f"{COMMAND} is not installed: pip install -e '.[dev]'"
    completed = subprocess.run(
        [str(COMMAND), "verify", "--json"],
        env={
            "ALLOCATION_LEDGER_STORE": "sqlite",
            "ALLOCATION_LEDGER_DATABASE": str(ledger_copy),
            "ALLOCATION_LEDGER_LOG_LEVEL": "WARNING",
        },
        cwd=ledger_copy.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(completed.stdout)
    assert report["clean"] is True, report
    assert report["violation"] is None
    assert report["mismatches"] == []
    assert report["allocations"] == len(ANSWERS["allocations"])
    assert report["events"] == report["position"] > 0  # every event was checked


@pytest.mark.anyio
async def test_the_tools_answer_as_they_did(legacy_service: AllocationService) -> None:
    assert_same_answers(await answers(legacy_service))


@pytest.mark.anyio
async def test_rebuilt_read_models_answer_as_they_did(
    legacy_service: AllocationService,
) -> None:
    position = legacy_service.projector.rebuild()
    assert position == legacy_service.projector.log.max_notification_id()
    assert_same_answers(await answers(legacy_service))
