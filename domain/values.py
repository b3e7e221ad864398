"""Value objects of the allocation domain: amounts, priorities, states, requests."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from allocation_ledger.domain.errors import InvalidRequestError

MILLICORES_PER_CORE = 1000
MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 30 * 24 * 3600
DEFAULT_TTL_SECONDS = 3600
MAX_WORKERS_PER_REQUEST = 10_000
MAX_SERVERS_PER_REQUEST = 32
MAX_METADATA_BYTES = 16_384
MAX_JOB_ID_LENGTH = 200
MAX_REQUEST_ID_LENGTH = 200

SERVER_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
POOL_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
JOB_ID_PATTERN = re.compile(r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$")


class Priority(StrEnum):
    """How much a request matters; ordered from least to most."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {
    Priority.LOW: 0,
    Priority.NORMAL: 1,
    Priority.HIGH: 2,
    Priority.CRITICAL: 3,
}


class AllocationState(StrEnum):
    """Where an allocation is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    RELEASING = "releasing"
    RELEASED = "released"
    EXPIRED = "expired"
    FAILED = "failed"
    QUEUED = "queued"
    PREEMPTED = "preempted"

    @property
    def is_live(self) -> bool:
        """Live allocations hold capacity."""
        return self in LIVE_STATES

    @property
    def lease_runs(self) -> bool:
        """Whether its lease is counting down: live, and past pending (a
        lease counts from activation, however long provisioning takes)."""
        return self.is_live and self is not AllocationState.PENDING

    @property
    def is_terminal(self) -> bool:
        """Terminal allocations never change again."""
        return self in TERMINAL_STATES


LIVE_STATES = frozenset(
    {AllocationState.PENDING, AllocationState.ACTIVE, AllocationState.RELEASING}
)
TERMINAL_STATES = frozenset(
    {
        AllocationState.RELEASED,
        AllocationState.EXPIRED,
        AllocationState.FAILED,
        AllocationState.PREEMPTED,
    }
)


class Dimension(StrEnum):
    """A kind of capacity a pool has, named as clients see it."""

    WORKERS = "workers"
    CPU = "cpu"
    MEMORY = "memory"
    MCP_PORTS = "mcp_ports"


@dataclass(frozen=True, order=True)
class Resources:
    """An amount of capacity: CPU in millicores, memory in MiB, whole workers."""

    cpu_millicores: int = 0
    memory_mib: int = 0
    workers: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millicores + other.cpu_millicores,
            self.memory_mib + other.memory_mib,
            self.workers + other.workers,
        )

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            self.cpu_millicores - other.cpu_millicores,
            self.memory_mib - other.memory_mib,
            self.workers - other.workers,
        )

    def amount(self, dimension: Dimension) -> int:
        if dimension is Dimension.WORKERS:
            return self.workers
        if dimension is Dimension.CPU:
            return self.cpu_millicores
        if dimension is Dimension.MEMORY:
            return self.memory_mib
        msg = f"resources have no amount of {dimension}"
        raise ValueError(msg)

    def is_within(self, other: Resources) -> bool:
        return (
            self.cpu_millicores <= other.cpu_millicores
            and self.memory_mib <= other.memory_mib
            and self.workers <= other.workers
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "cpu_millicores": self.cpu_millicores,
            "memory_mib": self.memory_mib,
            "workers": self.workers,
        }

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> Resources:
        return cls(data["cpu_millicores"], data["memory_mib"], data["workers"])


@dataclass(frozen=True)
class Rejection:
    """Why a request did not fit: the first dimension short, with the amounts.

    Amounts are in domain units (millicores, MiB, workers, ports).
    `preemption`: set when preemption would have made room but the pool's
    cross-tenant rule kept it from taking other tenants' allocations
    (cross_tenant.py: "other_tenants_within_quota" or
    "other_tenants_never_preempted"); absent from events otherwise, as in
    histories older than it.
    """

    code: str
    dimension: Dimension
    requested: int
    available: int
    preemption: str | None = None

    def as_dict(self) -> dict[str, Any]:
        recorded: dict[str, Any] = {
            "code": self.code,
            "dimension": str(self.dimension),
            "requested": self.requested,
            "available": self.available,
        }
        if self.preemption is not None:
            recorded["preemption"] = self.preemption
        return recorded

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Rejection:
        preemption = data.get("preemption")
        return cls(
            code=str(data["code"]),
            dimension=Dimension(data["dimension"]),
            requested=int(data["requested"]),
            available=int(data["available"]),
            preemption=None if preemption is None else str(preemption),
        )


INSUFFICIENT_CAPACITY = "insufficient_capacity"
QUEUE_TIMEOUT = "queue_timeout"
QUOTA_EXCEEDED = "quota_exceeded"
QUEUED_AHEAD = "queued_ahead"
EXCEEDS_POOL = "exceeds_pool"
"""Refusal codes: the pool is short; the wait ran out; the tenant's quota
would be exceeded; it would fit, but requests waiting in the queue come first;
it needs more than the pool's total in some dimension, so it could never be
granted (a request that waits, or one already queued when the pool shrank)."""


class QueuePolicy(StrEnum):
    """What a pool does when the request at the head of its queue does not fit."""

    STRICT = "strict"
    """Nobody passes the head: no request waits forever behind smaller ones."""
    BACKFILL = "backfill"
    """Smaller requests behind the head are granted if they fit meanwhile."""


@dataclass(frozen=True)
class AllocationRequest:
    """What a job asks for. Validated on construction."""

    job_id: str
    servers: tuple[str, ...] = ()
    workers: int = 0
    priority: Priority = Priority.NORMAL
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_job_id(self.job_id)
        if isinstance(self.servers, str) or not isinstance(self.servers, tuple | list):
            msg = (
                "mcp_servers must be a list of server names, "
                f"got {type(self.servers).__name__}"
            )
            raise InvalidRequestError(msg, field="mcp_servers")
        object.__setattr__(self, "servers", tuple(self.servers))
        for name in self.servers:
            validate_server_name(name)
        if len(self.servers) > MAX_SERVERS_PER_REQUEST:
            msg = (
                f"mcp_servers names {len(self.servers)} servers; "
                f"at most {MAX_SERVERS_PER_REQUEST} are allowed"
            )
            raise InvalidRequestError(msg, field="mcp_servers")
        duplicates = sorted({n for n in self.servers if self.servers.count(n) > 1})
        if duplicates:
            msg = f"mcp_servers names {', '.join(duplicates)} more than once"
            raise InvalidRequestError(msg, field="mcp_servers")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int):
            msg = f"workers must be a whole number, got {self.workers!r}"
            raise InvalidRequestError(msg, field="workers")
        if not 0 <= self.workers <= MAX_WORKERS_PER_REQUEST:
            msg = (
                f"workers must be between 0 and {MAX_WORKERS_PER_REQUEST}, "
                f"got {self.workers}"
            )
            raise InvalidRequestError(msg, field="workers")
        if not isinstance(self.priority, Priority):
            object.__setattr__(self, "priority", parse_priority(self.priority))
        validate_ttl(self.ttl_seconds)
        object.__setattr__(self, "metadata", canonical_metadata(self.metadata))

    @classmethod
    def restore(cls, data: dict[str, Any]) -> AllocationRequest:
        """Rebuild a recorded request without validating it again.

        History must always replay, even if validation rules tighten later.
        """
        request = object.__new__(cls)
        object.__setattr__(request, "job_id", data["job_id"])
        object.__setattr__(request, "servers", tuple(data["servers"]))
        object.__setattr__(request, "workers", data["workers"])
        object.__setattr__(request, "priority", Priority(data["priority"]))
        object.__setattr__(request, "ttl_seconds", data["ttl_seconds"])
        object.__setattr__(request, "metadata", data["metadata"])
        return request

    def as_dict(self) -> dict[str, Any]:
        """The request as stored in events and compared for idempotent retries."""
        return {
            "job_id": self.job_id,
            "servers": list(self.servers),
            "workers": self.workers,
            "priority": str(self.priority),
            "ttl_seconds": self.ttl_seconds,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class AdmissionOptions:
    """How a request asked to be admitted, beside what it asks for: whether
    it may wait in the queue, for how long at most (seconds; None: as long
    as it takes) and whether it may preempt. Recorded with the request, so
    that a retry with the same request_id is checked against them too."""

    wait: bool = False
    max_wait_seconds: int | None = None
    preempt: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The options as stored in the Requested event and compared on retry."""
        return {
            "wait": self.wait,
            "max_wait_seconds": self.max_wait_seconds,
            "preempt": self.preempt,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdmissionOptions:
        return cls(
            wait=bool(data["wait"]),
            max_wait_seconds=data["max_wait_seconds"],
            preempt=bool(data["preempt"]),
        )


def parse_priority(value: object) -> Priority:
    try:
        return Priority(str(value))
    except ValueError:
        allowed = ", ".join(p.value for p in Priority)
        msg = f"priority must be one of {allowed}, got {value!r}"
        raise InvalidRequestError(msg, field="priority") from None


def validate_job_id(job_id: object) -> None:
    if not isinstance(job_id, str) or not job_id:
        msg = "job_id must be a non-empty string"
        raise InvalidRequestError(msg, field="job_id")
    if len(job_id) > MAX_JOB_ID_LENGTH:
        msg = f"job_id is {len(job_id)} characters; at most {MAX_JOB_ID_LENGTH}"
        raise InvalidRequestError(msg, field="job_id")
    if not JOB_ID_PATTERN.match(job_id):
        msg = (
            f"job_id {job_id!r} must be printable ASCII without leading or "
            "trailing spaces"
        )
        raise InvalidRequestError(msg, field="job_id")


def validate_server_name(name: object) -> None:
    if not isinstance(name, str) or not SERVER_NAME_PATTERN.match(name):
        msg = (
            f"MCP server name {name!r} is invalid: use 1-63 lowercase letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
        raise InvalidRequestError(msg, field="mcp_servers")


def validate_pool_name(name: object) -> None:
    if not isinstance(name, str) or not POOL_NAME_PATTERN.match(name):
        msg = (
            f"pool name {name!r} is invalid: use 1-63 lowercase letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
        raise InvalidRequestError(msg, field="pool")


TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
"""Tenants are token subjects, so they allow what a subject does."""


def validate_tenant(tenant: object) -> None:
    if not isinstance(tenant, str) or not TENANT_PATTERN.match(tenant):
        msg = (
            f"tenant {tenant!r} is invalid: use 1-128 letters, digits, '.', '_', "
            "':', '@', '/' or '-', starting with a letter or digit"
        )
        raise InvalidRequestError(msg, field="tenant")


def validate_ttl(ttl_seconds: object) -> None:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        msg = f"ttl_seconds must be a whole number of seconds, got {ttl_seconds!r}"
        raise InvalidRequestError(msg, field="ttl_seconds")
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        msg = (
            f"ttl_seconds must be between {MIN_TTL_SECONDS} and "
            f"{MAX_TTL_SECONDS}, got {ttl_seconds}"
        )
        raise InvalidRequestError(msg, field="ttl_seconds")


def validate_request_id(request_id: object) -> None:
    """Refuse a request_id that is not 1-200 characters of Unicode text.

    Raises InvalidRequestError (field "request_id"). Lone surrogates (which
    Python strings can hold but UTF-8, the store's encoding, cannot) are
    refused here, before anything is decided, rather than failing the write.
    """
    if not isinstance(request_id, str) or not request_id:
        msg = "request_id must be a non-empty string"
        raise InvalidRequestError(msg, field="request_id")
    if len(request_id) > MAX_REQUEST_ID_LENGTH:
        msg = (
            f"request_id is {len(request_id)} characters; "
            f"at most {MAX_REQUEST_ID_LENGTH}"
        )
        raise InvalidRequestError(msg, field="request_id")
    _utf8_bytes(request_id, "request_id")


def _utf8_bytes(text: str, field: str) -> bytes:
    """`text` as UTF-8, as the event store writes it.

    Raises InvalidRequestError naming `field` when `text` holds a lone
    surrogate (such as "\\ud800", one half of a pair): it has no UTF-8 form.
    """
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        msg = (
            f"{field} is not valid Unicode text: it holds a lone surrogate "
            f"({text[error.start]!r}); send whole characters "
            "(a surrogate pair's two halves together, or the character itself)"
        )
        raise InvalidRequestError(msg, field=field) from None


def canonical_metadata(metadata: object) -> dict[str, Any]:
    """Validate metadata and return it as it reads back from JSON.

    Metadata is a JSON object of at most MAX_METADATA_BYTES (16,384) bytes,
    counted as JSON (json.dumps' default separators) in UTF-8, characters
    unescaped as the store keeps them (so "é" is 2 bytes, not the 6 of
    "\\u00e9"). Raises InvalidRequestError (field "metadata") for a
    non-object, non-string keys, values JSON cannot hold (NaN, infinities,
    sets), lone surrogates, oversize metadata, or objects shaped like the
    store's own encoded values.
    """
    if not isinstance(metadata, dict):
        msg = f"metadata must be an object, got {type(metadata).__name__}"
        raise InvalidRequestError(msg, field="metadata")
    if any(not isinstance(key, str) for key in metadata):
        msg = "metadata keys must be strings"
        raise InvalidRequestError(msg, field="metadata")
    try:
        encoded = json.dumps(
            metadata, sort_keys=True, allow_nan=False, ensure_ascii=False
        )
    except (TypeError, ValueError) as error:
        msg = f"metadata must be plain JSON: {error}"
        raise InvalidRequestError(msg, field="metadata") from None
    size = len(_utf8_bytes(encoded, "metadata"))
    if size > MAX_METADATA_BYTES:
        msg = (
            f"metadata is {size} bytes as JSON in UTF-8; at most "
            f"{MAX_METADATA_BYTES}: keep large payloads elsewhere and put a "
            "reference in metadata"
        )
        raise InvalidRequestError(msg, field="metadata")
    canonical: dict[str, Any] = json.loads(encoded)
    if _has_reserved_key(canonical):
        msg = (
            "metadata must not contain objects made of just '_type_' and "
            "'_data_' keys: the event store reads those as its own encoded values"
        )
        raise InvalidRequestError(msg, field="metadata")
    return canonical


def _has_reserved_key(value: object) -> bool:
    """Whether an object anywhere inside looks like the event store's own
    encoding of a value ({"_type_": ..., "_data_": ...})."""
    if isinstance(value, dict):
        if set(value) == {"_type_", "_data_"}:
            return True
        return any(_has_reserved_key(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_reserved_key(v) for v in value)
    return False
