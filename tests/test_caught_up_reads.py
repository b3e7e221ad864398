"""Queries answered at once on the event loop (adapters/storage/caught_up_reads.py):
only when the read models hold every event of the log, never waiting for a
writer, and with the same answers and errors as the queries that catch up."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from mcp import Client

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.storage.caught_up_reads import (
    CaughtUpReads,
    NotCaughtUp,
)
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.values import AllocationRequest, Resources
from tests.ledger_support import OpenService
from tests.mcp_support import OpenMemory, call, call_error

pytestmark = pytest.mark.anyio


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(store="sqlite", database=tmp_path / "ledger.db")


@pytest.fixture
def pair(
    settings: Settings, open_services: OpenService
) -> tuple[AllocationService, AllocationService]:
    """Two services on one SQLite file, as two server processes would be."""
    return open_services(settings), open_services(settings)


def reads_of(service: AllocationService) -> CaughtUpReads:
    reads = service.caught_up_reads
    assert reads is not None
    return reads


def request(service: AllocationService, workers: int = 1) -> str:
    made = service.ledger.request(AllocationRequest("job", workers=workers))
    return made.allocation.allocation_id


def test_only_sqlite_files_have_them(open_memory: OpenMemory) -> None:
    assert open_memory().caught_up_reads is None


def test_they_answer_only_when_the_read_models_hold_every_event(
    pair: tuple[AllocationService, AllocationService],
) -> None:
    writer, reader = pair
    reads = reads_of(reader)
    allocation_id = request(writer, workers=2)
    with pytest.raises(NotCaughtUp):
        reads.capacity()
    with pytest.raises(NotCaughtUp):
        reads.allocation(allocation_id)

    position = reader.read_models.catch_up()
    assert reads.catch_up() == position
    assert reads.allocation(allocation_id) == reader.read_models.allocation(
        allocation_id
    )
    capacity = reads.capacity()
    assert capacity == reader.read_models.capacity()
    assert capacity is not None
    assert capacity.reserved.workers == 2

    writer.ledger.release(allocation_id)  # another process writes again
    with pytest.raises(NotCaughtUp):
        reads.capacity()


def test_they_never_wait_for_a_writer(
    settings: Settings, pair: tuple[AllocationService, AllocationService]
) -> None:
    writer, reader = pair
    request(writer)
    reader.read_models.catch_up()
    other = sqlite3.connect(settings.database, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        other.execute("UPDATE ledger_view_position SET position = position")
        started = time.monotonic()
        capacity = reads_of(reader).capacity()
        assert time.monotonic() - started < 2
        assert capacity is not None
        assert capacity.reserved.workers == 1
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_get_capacity_sees_every_write_before_it(
    pair: tuple[AllocationService, AllocationService],
) -> None:
    """Its own writes and another process's, whether it reads at once or
    catches up first; the answers are the same either way."""
    writer, server_side = pair
    async with Client(stdio_server(server_side)) as client:
        made = await call(
            client, "request_resources", job_id="mine", mcp_servers=[], workers=2
        )
        first = await call(client, "get_capacity")
        reads_of(server_side).catch_up()  # caught up: the next reads at once
        again = await call(client, "get_capacity")
        assert again == first
        assert first["allocated_workers"] == 2

        request(writer, workers=3)  # another process
        seen = await call(client, "get_capacity")  # catches up first
        assert seen["allocated_workers"] == 5
        assert await call(client, "get_capacity") == seen

        await call(client, "release_resources", allocation_id=made["allocation_id"])
        assert (await call(client, "get_capacity"))["allocated_workers"] == 3
        capacity = server_side.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved == Resources(3_000, 3 * 2_048, 3)


async def test_an_unknown_pool_is_the_same_error_at_once(
    pair: tuple[AllocationService, AllocationService], open_memory: OpenMemory
) -> None:
    writer, server_side = pair
    request(writer)
    async with Client(stdio_server(open_memory())) as client:
        caught_up = await call_error(client, "get_capacity", {"pool": "elsewhere"})
    async with Client(stdio_server(server_side)) as client:
        server_side.read_models.catch_up()
        reads_of(server_side).catch_up()  # so it reads at once
        at_once = await call_error(client, "get_capacity", {"pool": "elsewhere"})
    assert at_once == caught_up
    assert "pool 'elsewhere' not found" in at_once


def test_read_models_commit_without_waiting_for_the_disk_and_events_wait(
    settings: Settings, open_services: OpenService
) -> None:
    """The read models are derived (a lost commit is folded again), so their
    connection commits without waiting for the disk; the event log's commits
    still wait for it (sql_dialects.SQLiteDialect)."""
    service = open_services(settings)
    with service.store.dialect.transaction(write=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 1  # NORMAL
    with service.ledger.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
        cursor.execute("PRAGMA synchronous")
        assert cursor.fetchone()[0] == 2  # FULL
