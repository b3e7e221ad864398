"""Why a request was refused, in client units and in the original wording;
why a retry with a used request_id was refused."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from allocation_ledger.adapters.mcp.schemas.allocation_fields import OmittedIfNone
from allocation_ledger.adapters.mcp.schemas.units import cores
from allocation_ledger.domain.cross_tenant import NOT_ACROSS_TENANTS, WITHIN_QUOTA
from allocation_ledger.domain.errors import RequestIdConflictError
from allocation_ledger.domain.provisioning import PROVISIONING_FAILED
from allocation_ledger.domain.values import (
    EXCEEDS_POOL,
    QUEUE_TIMEOUT,
    QUEUED_AHEAD,
    QUOTA_EXCEEDED,
    Dimension,
    Rejection,
)


class Reason(BaseModel):
    """Why a request was refused (the first dimension that did not fit), or
    that its provisioning failed (code only; `error` says what failed)."""

    code: str = Field(
        description=(
            "'insufficient_capacity' (the pool is short), 'quota_exceeded' (the "
            "tenant's quota would be passed), 'queued_ahead' (it would fit, but "
            "requests queued ahead of it come first), 'queue_timeout' (its "
            "max_wait_seconds passed while queued), 'exceeds_pool' (it needs "
            "more than the pool has in all, so it could never be granted: not "
            "queued, or failed in the queue when the pool shrank) or "
            "'provisioning_failed' (an MCP server did not start; `error` names "
            "it and quotes its log)."
        )
    )
    dimension: OmittedIfNone[Literal["workers", "cpu", "memory", "mcp_ports"]] = Field(
        None, description="The dimension short (not for provisioning_failed)."
    )
    requested: OmittedIfNone[int | float] = Field(
        None, description="What the request needed (cpu in cores, memory in MB)."
    )
    available: OmittedIfNone[int | float] = Field(
        None,
        description=(
            "What the pool had left (cpu in cores, memory in MB); for "
            "quota_exceeded, what the tenant's quota had left (for a queued "
            "request failed by a lower quota: the quota's limit); for "
            "exceeds_pool, the pool's total."
        ),
    )
    preemption: OmittedIfNone[
        Literal["other_tenants_within_quota", "other_tenants_never_preempted"]
    ] = Field(
        None,
        description=(
            "Why preempting did not help although lower priorities hold the room: "
            "'other_tenants_within_quota' (it belongs to other tenants, who may "
            "be preempted only while over their quota in the pool, and they are "
            "not) or 'other_tenants_never_preempted' (the pool never preempts "
            "other tenants). Omitted otherwise."
        ),
    )


PROVISIONING_FAILURE = Reason(code=PROVISIONING_FAILED)
"""The reason of an allocation whose provisioning failed."""


def failure_reason(
    rejection: Rejection | None, *, failed: bool, error: str | None
) -> Reason | None:
    """The reason a failed allocation shows: its refusal, or, when its
    provisioning failed (failed, no refusal, an error), provisioning_failed."""
    if rejection is not None:
        return reason_of(rejection)
    if failed and error is not None:
        return PROVISIONING_FAILURE
    return None


def _client_amount(dimension: Dimension, amount: int) -> int | float:
    return cores(amount) if dimension is Dimension.CPU else amount


def reason_of(rejection: Rejection) -> Reason:
    """A domain rejection in client units (cpu in cores, memory in MB)."""
    return Reason(
        code=rejection.code,
        dimension=rejection.dimension.value,
        requested=_client_amount(rejection.dimension, rejection.requested),
        available=_client_amount(rejection.dimension, rejection.available),
        preemption=rejection.preemption,
    )


def shown_waiting_for(
    recorded: dict[str, Any] | None, *, queued: bool
) -> Reason | None:
    """What a queued allocation's row says it waits for, in client units;
    None once it no longer waits (or when nothing was recorded)."""
    if not queued or recorded is None:
        return None
    return reason_of(Rejection.from_dict(recorded))


def refusal_message(reason: Reason) -> str:
    """The original wording: 'Insufficient workers: requested 10, available 6'.

    The scheduling refusals say what stopped them in the same form.
    """
    if reason.code == PROVISIONING_FAILED:
        return "Provisioning failed"
    amounts = f"requested {reason.requested}, available {reason.available}"
    if reason.code == QUOTA_EXCEEDED:
        return f"Quota exceeded for {reason.dimension}: {amounts} within the quota"
    if reason.code == QUEUED_AHEAD:
        return (
            f"Requests queued ahead come first ({reason.dimension}: {amounts} "
            "after them)"
        )
    if reason.code == EXCEEDS_POOL:
        return (
            f"Exceeds the pool: requested {_amount(reason.requested, reason.dimension)}"
            f", the pool has {reason.available} in all"
        )
    if reason.code == QUEUE_TIMEOUT:
        return f"Queue wait ran out: insufficient {reason.dimension}: {amounts}"
    return f"Insufficient {reason.dimension}: {amounts}{_preemption_note(reason)}"


AMOUNT_WORDS = {
    "workers": ("worker", "workers"),
    "cpu": ("core of CPU", "cores of CPU"),
    "memory": ("MB of memory", "MB of memory"),
    "mcp_ports": ("MCP port", "MCP ports"),
}
"""How an amount of each dimension reads, one and many (client units)."""


def _amount(value: float | None, dimension: str | None) -> str:
    """'1 worker', '5 workers', '2.5 cores of CPU': an amount with its unit."""
    one, many = AMOUNT_WORDS.get(dimension or "", (str(dimension), str(dimension)))
    return f"{value} {one if value == 1 else many}"


PREEMPTION_NOTES = {
    WITHIN_QUOTA: (
        "; preemption would need other tenants' allocations, and they are "
        "within their quota in this pool (another tenant's allocation may be "
        "preempted only while that tenant holds more than its quota)"
    ),
    NOT_ACROSS_TENANTS: (
        "; preemption would need other tenants' allocations, and this pool "
        "never preempts another tenant's allocations"
    ),
}
"""What a refusal adds when the cross-tenant rule kept preemption from
helping (docs/scheduling.md, "Preemption across tenants")."""


def _preemption_note(reason: Reason) -> str:
    return "" if reason.preemption is None else PREEMPTION_NOTES[reason.preemption]


ARGUMENT_NAMES = {"servers": "mcp_servers"}
"""request_resources's names for the domain's, where they differ."""


def retry_conflict_message(error: RequestIdConflictError) -> str:
    """One sentence naming each argument a retry changed, with both values
    (a string in quotes, anything else as JSON). (A request id belongs to
    its tenant, so a retry never finds another tenant's request to name.)"""

    def shown(value: Any) -> str:
        if isinstance(value, str):
            return f"'{value}'"
        return json.dumps(value, sort_keys=True)

    parts = []
    for change in error.changes:
        name = ARGUMENT_NAMES.get(change.argument, change.argument)
        parts.append(
            f"{name} was {shown(change.original)}, now {shown(change.retried)}"
        )
    return (
        f"request_id {shown(error.request_id)} was already used for allocation "
        f"{error.allocation_id} with other arguments, so this is not a retry of "
        f"it: {'; '.join(parts)} (repeat the original arguments to retry it, or "
        "use a new request_id for a different request)"
    )
