"""A ledger written before the code moved into one package still reads the same.

`fixtures/legacy-ledger.db` was written by the ledger of the old layout and
`fixtures/legacy-answers.json` holds what its MCP tools answered about it then,
at the clock time `now` (see `fixtures/write_legacy_ledger.py`; never regenerate
them). The current code must verify that history clean and answer exactly the
same, from the stored read models and from read models rebuilt from the log.
Every test works on a copy: the committed file is never opened for writing.

One recorded figure was wrong and is corrected here, not in the committed file
(`CORRECTED_USAGE`): the old code billed a queued request from its request,
where usage bills reserved time only (design invariant 9). The read-model
tables in the file are of the layout before `reserved_at`: opening the copy
replaces them and rebuilds them from the log (`test_the_old_read_model_...`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from mcp import Client

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
    open_service,
)
from allocation_ledger.adapters.storage.sql_read_models import SQLReadModels
from allocation_ledger.adapters.storage.sql_rows import SCHEMA_VERSION
from allocation_ledger.domain.clock import ManualClock
from tests.mcp_support import call
from tests.postgres import postgres_schema, postgres_settings

__all__ = ["postgres_schema"]

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEDGER = FIXTURES / "legacy-ledger.db"
ANSWERS: dict[str, Any] = json.loads((FIXTURES / "legacy-answers.json").read_text())
NOW = datetime.fromisoformat(ANSWERS.pop("now"))  # the clock time they were taken at

# "waits" (2 workers) was queued at 09:01:31 and granted at 09:02:01, when
# "holder" was released; it is still active at NOW, 09:09:16. The old code
# billed it from its request, 2 x 465 s; it held capacity from the grant,
# 2 x 435 s (each worker is 1 core and 2048 MiB). Nothing else changes.
RECORDED_USAGE = {
    "waits": {
        "cpu_core_seconds": 930.0,
        "memory_mb_seconds": 1_904_640.0,
        "worker_seconds": 930.0,
    }
}
CORRECTED_USAGE = {
    "waits": {
        "cpu_core_seconds": 870.0,
        "memory_mb_seconds": 1_781_760.0,
        "worker_seconds": 870.0,
    }
}


def _correct_usage(answers: dict[str, Any]) -> None:
    """Replace the wrong figures, checking first that they are the ones known."""
    for row in answers["get_usage"]["usage"]:
        if row["job_id"] in CORRECTED_USAGE:
            recorded = {k: row[k] for k in RECORDED_USAGE[row["job_id"]]}
            assert recorded == RECORDED_USAGE[row["job_id"]], row
            row.update(CORRECTED_USAGE[row["job_id"]])


_correct_usage(ANSWERS)
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
            "get_capacity": _as_recorded(await call(client, "get_capacity")),
            "list_allocations": await call(client, "list_allocations"),
            "get_usage": await call(client, "get_usage"),
        }


def _as_recorded(capacity: dict[str, Any]) -> dict[str, Any]:
    """get_capacity's answer without what was added since the answers were
    recorded, checking it first: a pool of a history older than the
    cross-tenant setting reads as `over_quota`, as a new pool starts."""
    assert capacity.pop("cross_tenant_preemption") == "over_quota"
    return capacity


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


# -- read-model tables of the layout before `reserved_at` ----------------------


def _columns(database: Path, table: str) -> list[str]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        return [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]


def _view_rows(database: Path) -> dict[str, tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute(
            "SELECT job_id, started_at, reserved_at, ended_at FROM "
            "ledger_allocation_view"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def test_the_file_holds_read_model_tables_of_the_old_layout() -> None:
    """What the upgrade tests start from (read without opening it for writing)."""
    uri = f"file:{LEDGER}?mode=ro&immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        columns = [
            r[1]
            for r in connection.execute("PRAGMA table_info(ledger_allocation_view)")
        ]
        names = [
            r[0] for r in connection.execute("SELECT name FROM ledger_view_position")
        ]
    assert "reserved_at" not in columns
    assert names == ["read_models"]  # no layout version: layout 1


def test_opening_replaces_old_read_model_tables_and_rebuilds_them(
    ledger_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "allocation_ledger.adapters.storage.service"):
        service = open_service(
            Settings(store="sqlite", database=ledger_copy), clock=ManualClock(NOW)
        )
    try:
        assert "older layout" in caplog.text
        assert isinstance(service.store, SQLReadModels)
        assert service.store.schema_version() == SCHEMA_VERSION
        assert service.store.position() == service.projector.log.max_notification_id()
        report = audit.verify(service)
        assert report.clean, report.as_dict()
    finally:
        service.close()
    assert "reserved_at" in _columns(ledger_copy, "ledger_allocation_view")
    rows = _view_rows(ledger_copy)
    # "waits" was requested at 09:01:31 and reserved when granted, at 09:02:01.
    requested, reserved, ended = rows["waits"]
    assert reserved - requested == 30.0
    assert ended is None  # still active
    # "too-big" was refused: it never held anything.
    assert rows["too-big"][1] is None

    caplog.clear()
    with caplog.at_level(logging.INFO, "allocation_ledger.adapters.storage.service"):
        again = open_service(
            Settings(store="sqlite", database=ledger_copy), clock=ManualClock(NOW)
        )
    again.close()
    assert "older layout" not in caplog.text  # current now: nothing replaced


def _copy_to_postgres(settings: Settings, schema: str) -> None:
    """The fixture's events, and its read-model tables and rows as the old code
    wrote them, into a PostgreSQL schema initialised by `init-db`."""
    init_database(settings)
    uri = f"file:{LEDGER}?mode=ro&immutable=1"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as source:
        events = source.execute(
            "SELECT rowid, originator_id, originator_version, topic, state "
            "FROM stored_events ORDER BY rowid"
        ).fetchall()
        ddl = [
            row[0]
            for row in source.execute(
                "SELECT sql FROM sqlite_master WHERE tbl_name IN "
                "('ledger_allocation_view', 'ledger_capacity_view') "
                "AND sql IS NOT NULL ORDER BY type DESC"
            )
        ]
        tables = {
            table: source.execute(f"SELECT * FROM {table}").fetchall()
            for table in ("ledger_allocation_view", "ledger_capacity_view")
        }
        [(position,)] = source.execute(
            "SELECT position FROM ledger_view_position WHERE name = 'read_models'"
        ).fetchall()
    assert [e[0] for e in events] == list(range(1, len(events) + 1))
    with psycopg.connect(**settings.postgres_conninfo()) as target:
        target.execute(f'SET search_path TO "{schema}"')
        target.cursor().executemany(
            "INSERT INTO allocationledger_events "
            "(originator_id, originator_version, topic, state) VALUES (%s, %s, %s, %s)",
            [(UUID(e[1]), e[2], e[3], e[4]) for e in events],
        )
        for table in tables:
            target.execute(f"DROP TABLE {table}")
        for statement in ddl:
            target.execute(statement)
        for table, rows in tables.items():
            if rows:
                marks = ", ".join(["%s"] * len(rows[0]))
                target.cursor().executemany(
                    f"INSERT INTO {table} VALUES ({marks})", rows
                )
        target.execute("DELETE FROM ledger_view_position")
        target.execute(
            "INSERT INTO ledger_view_position VALUES ('read_models', %s)", (position,)
        )


@pytest.mark.anyio
async def test_a_postgres_ledger_with_old_read_model_tables_is_upgraded(
    postgres_schema: str,
) -> None:
    settings = postgres_settings(postgres_schema)
    _copy_to_postgres(settings, postgres_schema)
    # Two servers start at once on the old tables: one replaces them, both work.
    with ThreadPoolExecutor(2) as pool:
        opened = list(
            pool.map(lambda _: open_service(settings, clock=ManualClock(NOW)), range(2))
        )
    try:
        for service in opened:
            assert isinstance(service.store, SQLReadModels)
            assert service.store.schema_version() == SCHEMA_VERSION
            assert_same_answers(await answers(service))
        report = audit.verify(opened[0])
        assert report.clean, report.as_dict()
    finally:
        for service in opened:
            service.close()
