"""The Allocation aggregate: every transition, and every refusal of one."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import (
    allocation_id_for_request,
    allocation_uuid,
    allocation_uuid_hex,
    is_allocation_id,
)
from allocation_ledger.domain.errors import AllocationNotLiveError, AllocationStateError
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Dimension,
    Rejection,
    Resources,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ALLOCATION_ID = "alloc-0123456789ab"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pending(ttl_seconds: int = 600) -> Allocation:
    request = AllocationRequest(
        "job-1", ("github",), workers=2, ttl_seconds=ttl_seconds
    )
    return Allocation.requested(
        ALLOCATION_ID,
        pool="default",
        request=request,
        request_id=None,
        resources=Resources(2000, 4096, 2),
        worker_ports=(8000, 8001),
        servers=(("github", 9000, True),),
        expires_at=at(ttl_seconds),
        at=T0,
        actor="alice",
    )


ENDPOINTS = Endpoints(
    workers={
        f"{ALLOCATION_ID}-worker-0": "http://localhost:8000",
        f"{ALLOCATION_ID}-worker-1": "http://localhost:8001",
    },
    servers={"github": "http://localhost:9000"},
)


def active(ttl_seconds: int = 600) -> Allocation:
    allocation = pending(ttl_seconds)
    allocation.activate(ENDPOINTS, at=at(1), actor="alice")
    return allocation


def released() -> Allocation:
    allocation = active()
    allocation.request_release(at=at(10), actor="bob")
    allocation.release(at=at(10), actor="bob")
    return allocation


def expired() -> Allocation:
    allocation = active()
    allocation.expire(at=at(601), actor="system:sweeper")
    return allocation


def failed() -> Allocation:
    allocation = pending()
    allocation.fail("no capacity on the host", at=at(1), actor="alice")
    return allocation


def rejected() -> Allocation:
    return Allocation.rejected(
        ALLOCATION_ID,
        pool="default",
        request=AllocationRequest("job-1", workers=11),
        request_id=None,
        resources=Resources(11000, 22528, 11),
        rejection=Rejection("insufficient_capacity", Dimension.WORKERS, 11, 10),
        at=T0,
        actor="alice",
    )


# -- ids -------------------------------------------------------------------------------


def test_an_allocation_id_from_a_request_id_is_stable_and_per_pool() -> None:
    first = allocation_id_for_request("default", "req-1")
    assert first == allocation_id_for_request("default", "req-1")
    assert first != allocation_id_for_request("gpu", "req-1")
    assert first != allocation_id_for_request("default", "req-2")
    assert is_allocation_id(first)


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("alloc-0123456789ab", True),
        ("alloc-0123456789AB", False),
        ("alloc-0123456789a", False),
        ("alloc-0123456789abc", False),
        ("alloc-0123456789ag", False),
        ("xlloc-0123456789ab", False),
        ("", False),
    ],
)
def test_public_ids_are_alloc_and_twelve_hex_characters(
    value: str, valid: bool
) -> None:
    assert is_allocation_id(value) is valid


def test_the_aggregate_id_is_derived_from_the_public_id() -> None:
    assert allocation_uuid(ALLOCATION_ID) == allocation_uuid(ALLOCATION_ID)
    assert allocation_uuid(ALLOCATION_ID) != allocation_uuid("alloc-0123456789ac")
    assert pending().id == allocation_uuid(ALLOCATION_ID)


@given(st.text())
def test_the_row_key_is_the_aggregate_id_in_hex(allocation_id: str) -> None:
    assert allocation_uuid_hex(allocation_id) == allocation_uuid(allocation_id).hex


# -- transitions -----------------------------------------------------------------------


def test_a_request_is_pending_with_its_workers_and_servers() -> None:
    allocation = pending()
    assert allocation.state is AllocationState.PENDING
    assert allocation.holds_capacity
    assert allocation.workers == [
        WorkerSlot(f"{ALLOCATION_ID}-worker-0", 8000),
        WorkerSlot(f"{ALLOCATION_ID}-worker-1", 8001),
    ]
    assert allocation.servers == [ServerSlot("github", 9000, started=True)]
    assert allocation.requested_at == T0
    assert allocation.requested_by == "alice"
    assert allocation.resources == Resources(2000, 4096, 2)


def test_activation_hands_out_endpoints_and_starts_the_lease() -> None:
    allocation = active(ttl_seconds=600)
    assert allocation.state is AllocationState.ACTIVE
    assert allocation.endpoints == ENDPOINTS
    assert allocation.activated_at == at(1)
    assert allocation.expires_at == at(601)


def test_renewal_moves_the_expiry_from_now() -> None:
    allocation = active(ttl_seconds=600)
    assert allocation.renew(None, at=at(300), actor="alice") == at(900)
    assert allocation.expires_at == at(900)
    assert allocation.renew(3600, at=at(400), actor="alice") == at(4000)
    assert allocation.expires_at == at(4000)
    assert allocation.renewals == 2
    assert allocation.state is AllocationState.ACTIVE


def test_a_release_goes_through_releasing_to_released() -> None:
    allocation = active()
    allocation.request_release(at=at(61), actor="bob")
    assert allocation.state is AllocationState.RELEASING
    assert allocation.holds_capacity
    result = allocation.release(at=at(61), actor="bob")
    assert allocation.state.value == "released"
    assert not allocation.holds_capacity
    assert allocation.ended_at == at(61)
    assert result.status == "released"
    assert result.freed == Resources(2000, 4096, 2)
    assert result.released_at == at(61)
    assert result.duration_seconds == 60.0


def test_asking_twice_for_a_release_records_it_once() -> None:
    allocation = active()
    allocation.request_release(at=at(5), actor="bob")
    allocation.request_release(at=at(6), actor="bob")
    kinds = [type(e) for e in allocation.collect_events()]
    assert kinds.count(Allocation.ReleaseRequested) == 1


def test_an_allocation_expires_with_its_lease_time() -> None:
    allocation = active()
    assert not allocation.is_due(at(600))
    assert allocation.is_due(at(601))
    allocation.expire(at=at(700), actor="system:sweeper")
    assert allocation.state is AllocationState.EXPIRED
    assert allocation.ended_at == at(700)
    assert not allocation.is_due(at(10_000))
    expiry = allocation.collect_events()[-1]
    assert isinstance(expiry, Allocation.Expired)
    assert expiry.expires_at == at(601)


def test_provisioning_failure_ends_the_allocation_with_the_error() -> None:
    allocation = failed()
    assert allocation.state is AllocationState.FAILED
    assert allocation.error == "no capacity on the host"
    assert not allocation.holds_capacity


def test_a_rejected_request_is_failed_with_its_reason_and_no_lease() -> None:
    allocation = rejected()
    assert allocation.state is AllocationState.FAILED
    assert allocation.rejection == Rejection(
        "insufficient_capacity", Dimension.WORKERS, 11, 10
    )
    assert allocation.expires_at is None
    assert allocation.workers == []
    assert not allocation.holds_capacity
    assert [type(e) for e in allocation.collect_events()] == [
        Allocation.Requested,
        Allocation.Rejected,
    ]


def test_every_event_carries_the_time_and_actor_it_was_given() -> None:
    allocation = active()
    allocation.renew(None, at=at(30), actor="carol")
    allocation.request_release(at=at(40), actor="bob")
    allocation.release(at=at(41), actor="bob")
    stamped = [
        (type(e).__name__, e.timestamp, cast(Allocation.Event, e).actor)
        for e in allocation.collect_events()
    ]
    assert stamped == [
        ("Requested", T0, "alice"),
        ("Activated", at(1), "alice"),
        ("Renewed", at(30), "carol"),
        ("ReleaseRequested", at(40), "bob"),
        ("Released", at(41), "bob"),
    ]


def test_replaying_the_events_gives_the_same_allocation() -> None:
    allocation = active()
    allocation.renew(1200, at=at(100), actor="alice")
    events = allocation.collect_events()
    replayed: Allocation | None = None
    for event in events:
        replayed = event.mutate(replayed)
    assert replayed is not None
    assert replayed.state is AllocationState.ACTIVE
    assert replayed.expires_at == allocation.expires_at == at(1300)
    assert replayed.workers == allocation.workers
    assert replayed.endpoints == allocation.endpoints
    assert replayed.version == allocation.version


# -- refusals --------------------------------------------------------------------------


def test_only_a_pending_allocation_can_be_activated() -> None:
    allocation = active()
    with pytest.raises(AllocationStateError) as raised:
        allocation.activate(ENDPOINTS, at=at(2), actor="alice")
    assert raised.value.state == "active"
    assert raised.value.action == "activate"


def test_a_pending_allocation_cannot_be_renewed() -> None:
    with pytest.raises(AllocationStateError) as raised:
        pending().renew(None, at=at(1), actor="alice")
    assert raised.value.state == "pending"


def test_a_releasing_allocation_cannot_be_renewed() -> None:
    allocation = active()
    allocation.request_release(at=at(2), actor="bob")
    with pytest.raises(AllocationStateError):
        allocation.renew(None, at=at(3), actor="alice")


def test_a_release_cannot_complete_before_it_was_asked_for() -> None:
    with pytest.raises(AllocationStateError) as raised:
        active().release(at=at(2), actor="bob")
    assert raised.value.action == "complete the release of"


TERMINAL: dict[str, Callable[[], Allocation]] = {
    "released": released,
    "expired": expired,
    "failed": failed,
    "rejected": rejected,
}

ACTIONS: dict[str, Callable[[Allocation], object]] = {
    "activate": lambda a: a.activate(ENDPOINTS, at=at(900), actor="x"),
    "renew": lambda a: a.renew(None, at=at(900), actor="x"),
    "release": lambda a: a.request_release(at=at(900), actor="x"),
    "complete the release of": lambda a: a.release(at=at(900), actor="x"),
    "expire": lambda a: a.expire(at=at(900), actor="x"),
    "fail": lambda a: a.fail("boom", at=at(900), actor="x"),
}


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_a_terminal_allocation_never_leaves_its_state(
    terminal: str, action: str
) -> None:
    allocation = TERMINAL[terminal]()
    state = allocation.state
    version = allocation.version
    with pytest.raises(AllocationNotLiveError) as raised:
        ACTIONS[action](allocation)
    assert raised.value.state == state
    assert raised.value.action == action
    assert raised.value.allocation_id == ALLOCATION_ID
    assert allocation.state is state
    assert allocation.version == version
