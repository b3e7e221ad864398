"""Several servers on one PostgreSQL ledger decide one at a time
(adapters/storage/writer_lock.py): none loses a race to another, and one that
holds the lock too long makes the others wait, then refuse, never hang."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
    open_service,
)
from allocation_ledger.adapters.storage.writer_lock import (
    RECHECK_SECONDS,
    writer_lock_key,
)
from allocation_ledger.domain.errors import LedgerBusyError
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Resources,
)
from tests.postgres import postgres_schema, postgres_settings

__all__ = ["postgres_schema"]  # a fixture

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_servers(postgres_schema: str) -> Iterator[list[AllocationService]]:
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    servers = [open_service(settings), open_service(settings)]
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def test_two_servers_deciding_at_once_never_lose_a_race(
    two_servers: list[AllocationService],
) -> None:
    first, second = two_servers
    first.ledger.set_capacity(Resources(64_000, 131_072, 16))
    failures: list[BaseException] = []
    states: list[AllocationState] = []

    def cycles(service: AllocationService, name: str) -> None:
        try:
            for n in range(15):
                made = service.ledger.request(AllocationRequest(f"{name}-{n}", (), 1))
                states.append(made.allocation.state)
                service.ledger.release(made.allocation.allocation_id)
        except BaseException as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [
        threading.Thread(target=cycles, args=(service, f"s{i}-t{t}"))
        for i, service in enumerate(two_servers)
        for t in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert states == [AllocationState.ACTIVE] * 90
    # Each decided after the other's commit, on its events: no lost race.
    assert first.ledger.conflicts == 0
    assert second.ledger.conflicts == 0
    assert first.ledger.pool("default").reserved == Resources()
    assert audit.verify(first).clean


def test_a_server_holding_the_lock_too_long_makes_others_refuse_not_hang(
    two_servers: list[AllocationService], postgres_schema: str
) -> None:
    first, _ = two_servers
    first.ledger.request(AllocationRequest("warm", (), 1))
    first.ledger.lock_timeout = 0.5
    conninfo = postgres_settings(postgres_schema).postgres_conninfo()
    with psycopg.connect(**conninfo, autocommit=True) as holder:
        holder.execute(
            "SELECT pg_advisory_lock(%s)", (writer_lock_key(postgres_schema),)
        )
        with pytest.raises(LedgerBusyError, match="another ledger server") as busy:
            first.ledger.request(AllocationRequest("waits", (), 1))
        assert busy.value.elsewhere
        holder.execute(
            "SELECT pg_advisory_unlock(%s)", (writer_lock_key(postgres_schema),)
        )
    made = first.ledger.request(AllocationRequest("after", (), 1))
    assert made.allocation.state is AllocationState.ACTIVE
    # The refused request wrote nothing.
    jobs = {a.job_id for a in first.read_models.allocations()}
    assert "waits" not in jobs


def test_a_lock_connection_the_database_dropped_while_idle_is_replaced(
    two_servers: list[AllocationService], postgres_schema: str
) -> None:
    """PostgreSQL ends the writers' lock's idle connection (a restart, an
    administrator, an idle-session timeout): it held nothing, so the next
    command takes the lock on a new connection instead of failing, as the
    event store's own connections do."""
    first, _ = two_servers
    first.ledger.request(AllocationRequest("warm", (), 1))
    conninfo = postgres_settings(postgres_schema).postgres_conninfo()
    with psycopg.connect(**conninfo, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'allocation-ledger writer lock'"
            " AND pid <> pg_backend_pid()"
        ).fetchall()
    assert ended
    made = first.ledger.request(AllocationRequest("after", (), 1))
    assert made.allocation.state is AllocationState.ACTIVE


def test_a_server_alone_on_its_ledger_does_not_take_the_lock(
    postgres_schema: str,
) -> None:
    """Alone, a server has nobody to wait for: it decides without the
    writers' lock (two round trips a batch saved), so even a session that
    holds the key does not hold it up; once a second server serves the
    ledger, it takes the lock again (within RECHECK_SECONDS)."""
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    first = open_service(settings)
    try:
        first.ledger.lock_timeout = 0.5
        key = writer_lock_key(postgres_schema)
        with psycopg.connect(**settings.postgres_conninfo(), autocommit=True) as other:
            other.execute("SELECT pg_advisory_lock(%s)", (key,))
            made = first.ledger.request(AllocationRequest("alone", (), 1))
            assert made.allocation.state is AllocationState.ACTIVE
            second = open_service(settings)
            try:
                deadline = time.monotonic() + RECHECK_SECONDS + 5
                while time.monotonic() < deadline:
                    try:
                        first.ledger.request(AllocationRequest("shared", (), 1))
                    except LedgerBusyError:
                        break
                    time.sleep(0.1)
                else:
                    raise AssertionError("the lock was never taken with two servers")
            finally:
                second.close()
    finally:
        first.close()
