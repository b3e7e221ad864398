"""The PostgreSQL store: the same ledger and read models, shared by processes."""

from __future__ import annotations

import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import (
    DatabaseError,
    init_database,
    open_service,
)
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from allocation_ledger.projections.store import ListingQuery
from tests.postgres import postgres_schema, postgres_settings

__all__ = ["postgres_schema"]


def test_requests_and_releases_are_kept_in_postgres(postgres_schema: str) -> None:
    init_database(postgres_settings(postgres_schema))
    clock = ManualClock()
    service = open_service(postgres_settings(postgres_schema), clock=clock)
    try:
        kept = service.ledger.request(AllocationRequest("job-a", ("github",), 2))
        gone = service.ledger.request(AllocationRequest("job-b", (), 1))
        service.ledger.release(gone.allocation.allocation_id)
    finally:
        service.close()

    reopened = open_service(postgres_settings(postgres_schema), clock=clock)
    try:
        capacity = reopened.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved.workers == 2
        assert capacity.servers["github"].references == 1
        active = reopened.read_models.allocations(
            ListingQuery(state=AllocationState.ACTIVE)
        )
        assert [a.allocation_id for a in active] == [kept.allocation.allocation_id]
        released = reopened.ledger.release(kept.allocation.allocation_id)
        assert released.result.status == "released"
        capacity = reopened.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved.workers == 0
    finally:
        reopened.close()


def test_two_services_on_one_database_see_each_others_commands(
    postgres_schema: str,
) -> None:
    init_database(postgres_settings(postgres_schema))
    clock = ManualClock()
    first = open_service(postgres_settings(postgres_schema), clock=clock)
    second = open_service(postgres_settings(postgres_schema), clock=clock)
    try:
        second.ledger.request(AllocationRequest("job-0", (), 1))
        made = first.ledger.request(AllocationRequest("job-a", (), 3))
        seen = second.read_models.allocation(made.allocation.allocation_id)
        assert seen.state == "active"
        capacity = second.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved.workers == 4
        # Each service's cached pool is behind the other's writes; it is brought
        # up to date before deciding, so capacity is never over-committed.
        other = second.ledger.request(AllocationRequest("job-b", (), 6))
        assert other.allocation.state is AllocationState.ACTIVE
        refused = first.ledger.request(AllocationRequest("job-c", (), 1))
        assert refused.allocation.state is AllocationState.FAILED
        assert refused.allocation.rejection is not None
        assert refused.allocation.rejection.available == 0
        assert second.ledger.pool("default").reserved.workers == 10
    finally:
        first.close()
        second.close()


def test_an_uninitialised_database_is_refused_with_what_to_do(
    postgres_schema: str,
) -> None:
    with pytest.raises(DatabaseError, match="not initialised: run `allocation-ledger"):
        open_service(postgres_settings(postgres_schema))
    init_database(postgres_settings(postgres_schema))
    init_database(postgres_settings(postgres_schema))  # a second time changes nothing
    open_service(postgres_settings(postgres_schema)).close()


def test_an_unreachable_database_is_a_plain_error() -> None:
    settings = Settings(store="postgres", postgres_host="127.0.0.1", postgres_port=1)
    expected = r"cannot reach PostgreSQL at 127\.0\.0\.1:1/"
    with pytest.raises(DatabaseError, match=expected):
        open_service(settings)
