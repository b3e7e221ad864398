"""What get_allocation_history answers: every event of one allocation, in
client units.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.refusals import reason_of, refusal_message
from allocation_ledger.adapters.mcp.schemas.units import UtcTime, amounts, iso
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.values import AllocationState, Rejection, Resources


# One event of get_allocation_history, and its whole answer. (A docstring would
# add a description to the tool's published output schema.)
class HistoryEvent(BaseModel):
    version: int
    event: str = Field(
        description=(
            "requested, queued, granted, rejected, activated, renewed, "
            "release_requested, released, expired, preempted or failed."
        )
    )
    at: UtcTime
    actor: str = Field(
        description="Who caused it: a token subject, 'local', or 'system:sweeper'."
    )
    state: str = Field(description="The allocation's state after this event.")
    changes: dict[str, Any] = Field(
        description="What the event recorded (cpu in cores, memory in MB)."
    )


class HistoryResult(BaseModel):
    allocation_id: str
    job_id: str
    pool: str
    state: str
    events: list[HistoryEvent]
    count: int


_STATE_AFTER: dict[type[Allocation.Event], AllocationState] = {
    Allocation.Requested: AllocationState.PENDING,
    Allocation.Queued: AllocationState.QUEUED,
    Allocation.Granted: AllocationState.PENDING,
    Allocation.Preempted: AllocationState.PREEMPTED,
    Allocation.Rejected: AllocationState.FAILED,
    Allocation.Activated: AllocationState.ACTIVE,
    Allocation.ReleaseRequested: AllocationState.RELEASING,
    Allocation.Released: AllocationState.RELEASED,
    Allocation.Expired: AllocationState.EXPIRED,
    Allocation.Failed: AllocationState.FAILED,
}


_BASE_FIELDS = frozenset(
    {"originator_id", "originator_version", "timestamp", "actor", "originator_topic"}
)


def _event_name(event: object) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _changes(event: Allocation.Event) -> dict[str, Any]:
    """What one event recorded, in client units."""
    if isinstance(event, Allocation.Requested):
        request = event.request
        # How it asked to be admitted; not recorded by older ledgers.
        options = {} if event.options is None else dict(event.options)
        return {
            "job_id": request["job_id"],
            "pool": event.pool,
            "mcp_servers": list(request["servers"]),
            "workers": request["workers"],
            "priority": request["priority"],
            "ttl_seconds": request["ttl_seconds"],
            "metadata": request["metadata"],
            "request_id": event.request_id,
            "resources": amounts(Resources.from_dict(event.resources)).model_dump(),
            "worker_ports": list(event.worker_ports),
            "server_ports": {str(name): int(port) for name, port, _ in event.servers},
            "servers_started": [
                str(name) for name, _, started in event.servers if started
            ],
            "expires_at": _json_safe(event.expires_at),
            "tenant": event.tenant,
            **options,
        }
    if isinstance(event, Allocation.Rejected):
        reason = reason_of(Rejection.from_dict(event.reason))
        return {"error": refusal_message(reason), "reason": reason.model_dump()}
    if isinstance(event, Allocation.Queued):
        waiting = reason_of(Rejection.from_dict(event.reason))
        return {
            "waiting_for": waiting.model_dump(),
            "queue_deadline": _json_safe(event.deadline),
        }
    if isinstance(event, Allocation.Granted):
        held = {}
        if event.resources is not None:  # the pool's sizes at the grant
            held = {
                "resources": amounts(Resources.from_dict(event.resources)).model_dump()
            }
        return {
            **held,
            "worker_ports": list(event.worker_ports),
            "server_ports": {str(name): int(port) for name, port, _ in event.servers},
            "servers_started": [
                str(name) for name, _, started in event.servers if started
            ],
            "expires_at": iso(event.expires_at),
        }
    if isinstance(event, Allocation.Preempted):
        return {"preempted_by": event.by}
    if isinstance(event, Allocation.Activated):
        return {
            "worker_endpoints": dict(event.worker_endpoints),
            "server_endpoints": dict(event.server_endpoints),
            "expires_at": iso(event.expires_at),
        }
    return {
        field.name: _json_safe(getattr(event, field.name))
        for field in dataclasses.fields(event)
        if field.name not in _BASE_FIELDS
    }


def history_result(allocation_id: str, events: list[Allocation.Event]) -> HistoryResult:
    """Every event of one allocation, in order, with time, actor and changes."""
    entries: list[HistoryEvent] = []
    state = AllocationState.PENDING
    job_id = pool = ""
    for event in events:
        if isinstance(event, Allocation.Requested):
            job_id, pool = event.request["job_id"], event.pool
        state = _STATE_AFTER.get(type(event), state)
        entries.append(
            HistoryEvent(
                version=event.originator_version,
                event=_event_name(event),
                at=event.timestamp,
                actor=event.actor,
                state=state.value,
                changes=_changes(event),
            )
        )
    return HistoryResult(
        allocation_id=allocation_id,
        job_id=job_id,
        pool=pool,
        state=state.value,
        events=entries,
        count=len(entries),
    )
