"""Events described for people and machines: allocation history and export."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.registry import PoolRegistry
from allocation_ledger.domain.server_process import ServerProcess
from allocation_ledger.domain.worker_process import WorkerProcess
from allocation_ledger.projections.codec import moment_text

_BASE_FIELDS = frozenset(
    {"originator_id", "originator_version", "timestamp", "actor", "originator_topic"}
)


@dataclass(frozen=True)
class HistoryEntry:
    """One event: when, who, what kind, and what it changed."""

    position: int | None
    aggregate: str
    aggregate_id: str
    version: int
    at: datetime
    event: str
    actor: str
    changes: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "aggregate": self.aggregate,
            "aggregate_id": self.aggregate_id,
            "version": self.version,
            "time": moment_text(self.at),
            "type": self.event,
            "actor": self.actor,
            "payload": self.changes,
        }


_PLAIN = frozenset({str, int, float, bool, type(None)})
"""Types that are plain JSON as they are (exactly these: not their
subclasses, such as a string enum)."""


def json_safe(value: Any) -> Any:
    """Event field values as plain JSON (times as ISO 8601 with offset)."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, datetime):
        return moment_text(value)
    if isinstance(value, Enum):
        return value.value
    plain = _PLAIN
    if isinstance(value, dict):
        return {
            k if type(k) is str else str(k): v if type(v) in plain else json_safe(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [v if type(v) in plain else json_safe(v) for v in value]
    return value


_KINDS: dict[type[Any], str] = {}  # event class: its aggregate's kind


def aggregate_kind(event: object) -> str:
    """The kind of aggregate an event belongs to (found once per class)."""
    found = _KINDS.get(type(event))
    if found is None:
        found = _KINDS[type(event)] = _kind_of(event)
    return found


def _kind_of(event: object) -> str:
    if isinstance(event, Allocation.Event):
        return "allocation"
    if isinstance(event, Pool.Event):
        return "pool"
    if isinstance(event, PoolRegistry.Event):
        return "pool-registry"
    if isinstance(event, ServerProcess.Event):
        return "server-process"
    if isinstance(event, WorkerProcess.Event):
        return "worker-process"
    return "unknown"


def describe(event: Any, position: int | None = None) -> HistoryEntry:
    """Describe a decoded domain event."""
    plain = _PLAIN
    fields = {
        name: value if type(value) in plain else json_safe(value)
        for name, value in vars(event).items()
        if name not in _BASE_FIELDS
    }
    return HistoryEntry(
        position=position,
        aggregate=aggregate_kind(event),
        aggregate_id=str(event.originator_id),
        version=int(event.originator_version),
        at=event.timestamp,
        event=type(event).__name__,
        actor=str(getattr(event, "actor", "")),
        changes=fields,
    )


def describe_record(
    event: Any, position: int | None = None, aggregate_id: str | None = None
) -> dict[str, Any]:
    """`describe(event, position).as_dict()`, without the entry in between
    (an export writes a million). `aggregate_id`: the text of the event's
    aggregate id, when the caller has it already."""
    plain = _PLAIN
    return {
        "position": position,
        "aggregate": aggregate_kind(event),
        "aggregate_id": str(event.originator_id)
        if aggregate_id is None
        else aggregate_id,
        "version": int(event.originator_version),
        "time": moment_text(event.timestamp),
        "type": type(event).__name__,
        "actor": str(getattr(event, "actor", "")),
        "payload": {
            name: value if type(value) in plain else json_safe(value)
            for name, value in vars(event).items()
            if name not in _BASE_FIELDS
        },
    }
