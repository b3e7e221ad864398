"""Value objects: amounts, priorities, states, and the validation of a request."""

from __future__ import annotations

from typing import Any

import pytest

from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.values import (
    DEFAULT_TTL_SECONDS,
    MAX_SERVERS_PER_REQUEST,
    MAX_TTL_SECONDS,
    MAX_WORKERS_PER_REQUEST,
    MIN_TTL_SECONDS,
    AllocationRequest,
    AllocationState,
    Dimension,
    Priority,
    Rejection,
    Resources,
    parse_priority,
    validate_pool_name,
    validate_request_id,
)

# -- Resources -------------------------------------------------------------------------


def test_resources_add_and_subtract_per_dimension() -> None:
    a = Resources(1500, 2048, 1)
    b = Resources(500, 1024, 2)
    assert a + b == Resources(2000, 3072, 3)
    assert a - b == Resources(1000, 1024, -1)


def test_resources_amount_names_each_capacity_dimension() -> None:
    amount = Resources(cpu_millicores=3000, memory_mib=6144, workers=3)
    assert amount.amount(Dimension.CPU) == 3000
    assert amount.amount(Dimension.MEMORY) == 6144
    assert amount.amount(Dimension.WORKERS) == 3
    with pytest.raises(ValueError, match="mcp_ports"):
        amount.amount(Dimension.MCP_PORTS)


def test_resources_within_needs_every_dimension_to_fit() -> None:
    total = Resources(2000, 4096, 2)
    assert Resources(2000, 4096, 2).is_within(total)
    assert not Resources(2001, 0, 0).is_within(total)
    assert not Resources(0, 4097, 0).is_within(total)
    assert not Resources(0, 0, 3).is_within(total)


def test_resources_round_trip_through_their_stored_form() -> None:
    amount = Resources(1234, 5678, 9)
    assert amount.as_dict() == {
        "cpu_millicores": 1234,
        "memory_mib": 5678,
        "workers": 9,
    }
    assert Resources.from_dict(amount.as_dict()) == amount


def test_rejection_round_trips_with_its_facts() -> None:
    rejection = Rejection("insufficient_capacity", Dimension.WORKERS, 10, 6)
    assert rejection.as_dict() == {
        "code": "insufficient_capacity",
        "dimension": "workers",
        "requested": 10,
        "available": 6,
    }
    assert Rejection.from_dict(rejection.as_dict()) == rejection


# -- priorities and states -------------------------------------------------------------


def test_priorities_are_ordered_from_low_to_critical() -> None:
    ordered = sorted(Priority, key=lambda p: p.rank)
    assert ordered == [
        Priority.LOW,
        Priority.NORMAL,
        Priority.HIGH,
        Priority.CRITICAL,
    ]


def test_parse_priority_accepts_the_names_and_refuses_others() -> None:
    assert parse_priority("high") is Priority.HIGH
    with pytest.raises(InvalidRequestError) as raised:
        parse_priority("urgent")
    assert raised.value.field == "priority"
    assert "low, normal, high, critical" in str(raised.value)
    assert "'urgent'" in str(raised.value)


@pytest.mark.parametrize(
    ("state", "live"),
    [
        (AllocationState.PENDING, True),
        (AllocationState.ACTIVE, True),
        (AllocationState.RELEASING, True),
        (AllocationState.RELEASED, False),
        (AllocationState.EXPIRED, False),
        (AllocationState.FAILED, False),
    ],
)
def test_only_pending_active_and_releasing_hold_capacity(
    state: AllocationState, live: bool
) -> None:
    assert state.is_live is live
    assert state.is_terminal is not live


# -- AllocationRequest -----------------------------------------------------------------


def test_a_request_has_the_original_defaults() -> None:
    request = AllocationRequest("job-1")
    assert request.servers == ()
    assert request.workers == 0
    assert request.priority is Priority.NORMAL
    assert request.ttl_seconds == DEFAULT_TTL_SECONDS == 3600
    assert request.metadata == {}


def test_a_priority_given_as_text_becomes_a_priority() -> None:
    assert AllocationRequest("job-1", priority="critical").priority is (  # type: ignore[arg-type]
        Priority.CRITICAL
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"job_id": "x" * 200},
        {"job_id": "job with inner spaces"},
        {"job_id": "a"},
        {"servers": tuple(f"s{i}" for i in range(MAX_SERVERS_PER_REQUEST))},
        {"servers": ("a" * 63, "0.x_y-z")},
        {"workers": MAX_WORKERS_PER_REQUEST},
        {"ttl_seconds": MIN_TTL_SECONDS},
        {"ttl_seconds": MAX_TTL_SECONDS},
        {"metadata": {"team": "research", "tags": ["a", "b"], "n": 1.5}},
    ],
)
def test_requests_at_the_limits_are_accepted(kwargs: dict[str, Any]) -> None:
    fields: dict[str, Any] = {"job_id": "job-1", **kwargs}
    request = AllocationRequest(**fields)
    assert request.as_dict()["job_id"] == fields["job_id"]


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"job_id": ""}, "job_id", "non-empty"),
        ({"job_id": 123}, "job_id", "non-empty string"),
        ({"job_id": "x" * 201}, "job_id", "201 characters"),
        ({"job_id": " job"}, "job_id", "leading or trailing"),
        ({"job_id": "job "}, "job_id", "leading or trailing"),
        ({"job_id": "job\tone"}, "job_id", "printable ASCII"),
        ({"job_id": "jöb"}, "job_id", "printable ASCII"),
        ({"servers": ("GitHub",)}, "mcp_servers", "'GitHub'"),
        ({"servers": ("-dash",)}, "mcp_servers", "'-dash'"),
        ({"servers": ("a" * 64,)}, "mcp_servers", "invalid"),
        ({"servers": ("file system",)}, "mcp_servers", "'file system'"),
        ({"servers": ("",)}, "mcp_servers", "invalid"),
        ({"servers": (7,)}, "mcp_servers", "invalid"),
        (
            {"servers": ("github", "slack", "github")},
            "mcp_servers",
            "github more than once",
        ),
        (
            {"servers": tuple(f"s{i}" for i in range(MAX_SERVERS_PER_REQUEST + 1))},
            "mcp_servers",
            "at most 32",
        ),
        ({"workers": -1}, "workers", "got -1"),
        ({"workers": MAX_WORKERS_PER_REQUEST + 1}, "workers", "got 10001"),
        ({"workers": 1.5}, "workers", "whole number"),
        ({"workers": True}, "workers", "whole number"),
        ({"workers": "2"}, "workers", "whole number"),
        ({"priority": "urgent"}, "priority", "'urgent'"),
        ({"priority": ""}, "priority", "one of"),
        ({"ttl_seconds": MIN_TTL_SECONDS - 1}, "ttl_seconds", "got 59"),
        ({"ttl_seconds": 0}, "ttl_seconds", "between 60"),
        ({"ttl_seconds": -60}, "ttl_seconds", "between 60"),
        ({"ttl_seconds": MAX_TTL_SECONDS + 1}, "ttl_seconds", "between 60"),
        ({"ttl_seconds": 120.0}, "ttl_seconds", "whole number"),
        ({"ttl_seconds": True}, "ttl_seconds", "whole number"),
        ({"metadata": ["not", "an", "object"]}, "metadata", "must be an object"),
        ({"metadata": "{}"}, "metadata", "must be an object"),
        ({"metadata": {1: "x"}}, "metadata", "keys must be strings"),
        ({"metadata": {"when": object()}}, "metadata", "plain JSON"),
        ({"metadata": {"x": float("nan")}}, "metadata", "plain JSON"),
        ({"metadata": {"x": {1, 2}}}, "metadata", "plain JSON"),
        ({"metadata": {"blob": "x" * 20_000}}, "metadata", "at most 16384"),
    ],
)
def test_an_invalid_request_names_the_field(
    kwargs: dict[str, Any], field: str, words: str
) -> None:
    fields: dict[str, Any] = {"job_id": "job-1", **kwargs}
    with pytest.raises(InvalidRequestError) as raised:
        AllocationRequest(**fields)
    assert raised.value.field == field
    assert words in str(raised.value)


def test_a_bare_string_is_not_taken_as_a_list_of_servers() -> None:
    with pytest.raises(InvalidRequestError) as raised:
        AllocationRequest("job-1", servers="github")  # type: ignore[arg-type]
    assert raised.value.field == "mcp_servers"


def test_metadata_is_kept_as_it_reads_back_from_json() -> None:
    request = AllocationRequest("job-1", metadata={"b": (1, 2), "a": {"c": None}})
    assert request.metadata == {"a": {"c": None}, "b": [1, 2]}
    assert request.as_dict() == {
        "job_id": "job-1",
        "servers": [],
        "workers": 0,
        "priority": "normal",
        "ttl_seconds": 3600,
        "metadata": {"a": {"c": None}, "b": [1, 2]},
    }


def test_a_restored_request_is_not_validated_again() -> None:
    """History must replay even if a rule tightened after it was written."""
    stored = {
        "job_id": " old job ",
        "servers": ["OldName"],
        "workers": 1,
        "priority": "high",
        "ttl_seconds": 5,
        "metadata": {},
    }
    request = AllocationRequest.restore(stored)
    assert request.as_dict() == stored
    assert request.priority is Priority.HIGH


@pytest.mark.parametrize("name", ["default", "gpu-a100", "p.1_x", "0"])
def test_valid_pool_names(name: str) -> None:
    validate_pool_name(name)


@pytest.mark.parametrize("name", ["", "Default", "-pool", "a b", "x" * 64, None])
def test_invalid_pool_names_are_refused_naming_the_pool_field(name: object) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        validate_pool_name(name)
    assert raised.value.field == "pool"


@pytest.mark.parametrize("request_id", ["", "r" * 201, 42])
def test_invalid_request_ids_are_refused(request_id: object) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        validate_request_id(request_id)
    assert raised.value.field == "request_id"


@pytest.mark.parametrize(
    "metadata",
    [
        {"_type_": "datetime_iso", "_data_": "2026-01-01T00:00:00+00:00"},
        {"nested": [{"_type_": "unknown", "_data_": 1}]},
    ],
)
def test_metadata_shaped_like_the_stores_own_encoding_is_refused(
    metadata: dict[str, object],
) -> None:
    with pytest.raises(InvalidRequestError, match="_type_") as raised:
        AllocationRequest("job", (), 1, metadata=metadata)
    assert raised.value.field == "metadata"


def test_metadata_merely_mentioning_type_is_kept() -> None:
    metadata = {"_type_": "only one key", "text": '"_type_"'}
    assert AllocationRequest("job", (), 1, metadata=metadata).metadata == metadata


# -- text the store can write: UTF-8, sizes as stored ----------------------------------


@pytest.mark.parametrize(
    "metadata",
    [{"note": "a\ud800b"}, {"\udfff": 1}, {"deep": [{"x": "\udc80"}]}],
)
def test_metadata_with_a_lone_surrogate_is_refused_naming_it(
    metadata: dict[str, object],
) -> None:
    """A lone surrogate has no UTF-8 form: the store could not write it."""
    with pytest.raises(InvalidRequestError, match="lone surrogate") as raised:
        AllocationRequest("job", metadata=metadata)
    assert raised.value.field == "metadata"


def test_a_request_id_with_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="lone surrogate") as raised:
        validate_request_id("retry-\ud83d")
    assert raised.value.field == "request_id"


def test_whole_characters_outside_ascii_are_kept() -> None:
    metadata = {"note": "café 🚀", "名前": "ジョブ"}
    assert AllocationRequest("job", metadata=metadata).metadata == metadata
    validate_request_id("retry-🚀-é")


def test_metadata_size_counts_utf8_bytes_not_json_escapes() -> None:
    """8,000 "é" are 16,000 bytes in UTF-8 (as stored), 48,000 as \\u escapes."""
    accented = {"note": "é" * 8_000}
    assert AllocationRequest("job", metadata=accented).metadata == accented
    with pytest.raises(InvalidRequestError, match="16384") as raised:
        AllocationRequest("job", metadata={"note": "é" * 8_200})
    assert raised.value.field == "metadata"
    assert "16412 bytes" in str(raised.value)  # {"note": "…"}: 12 + 16,400
