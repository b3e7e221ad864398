"""A pool's scheduling settings: who waits and who yields, and queue rank.

The rules are in docs/scheduling.md: the queue is served by effective
priority (aged one level per `aging_seconds` waited, up to critical), then
arrival; `strict` lets nobody pass the head, `backfill` grants the first
that fits; a priority preempts only the strictly lower ones its pool's rules
name, and across tenants only where `cross_tenant_preemption` allows
(cross_tenant.py). The decisions themselves are in queueing.py,
preemption.py and admission.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.values import Priority, QueuePolicy

DEFAULT_AGING_SECONDS = 600
DEFAULT_PREEMPTION: dict[str, tuple[str, ...]] = {
    Priority.CRITICAL.value: (Priority.LOW.value, Priority.NORMAL.value),
    Priority.HIGH.value: (Priority.LOW.value,),
}
"""The default rules: critical preempts low and normal, high preempts low."""
MAX_WAIT_SECONDS = 7 * 24 * 3600
"""The longest a request may wait in a queue, and the longest aging period."""


class CrossTenantPreemption(StrEnum):
    """Whether a request may preempt another tenant's allocations
    (docs/scheduling.md, "Preemption across tenants"; the rule Kueue applies
    to the queues of a cohort with `reclaimWithinCohort`).

    Priorities are chosen by the caller, so across tenants they prove
    nothing: by default another tenant's allocation is a candidate only
    while that tenant holds more than its quota in the pool.
    """

    OVER_QUOTA = "over_quota"
    """Another tenant's allocation may be preempted (by priority, as within
    a tenant) only while that tenant holds more than its quota in the pool,
    and only an allocation holding some of a dimension it is over in. A
    tenant without a quota in the pool is never preempted by another."""
    ANY = "any"
    """Priorities compare across tenants as within one (what every pool
    did before this setting existed; older histories read as this)."""
    NEVER = "never"
    """A request preempts only allocations of its own tenant."""


def queue_rank(
    priority: Priority, enqueued_at: datetime, now: datetime, aging_seconds: int
) -> int:
    """A waiting request's rank: its priority plus one per aging period it has
    waited, up to critical. The queue is served by rank, then arrival."""
    waited = max((now - enqueued_at).total_seconds(), 0.0)
    aged = int(waited // max(aging_seconds, 1))
    return min(priority.rank + aged, Priority.CRITICAL.rank)


def cross_tenant_of(recorded: str | None) -> CrossTenantPreemption:
    """The setting an event or snapshot recorded. None (histories older than
    the setting) reads as `over_quota`, as a new pool starts: the recorded
    past is unchanged (events hold outcomes, not rules), and a pool created
    before the setting is no more open to a self-declared `critical` of
    another tenant than a new one."""
    return (
        CrossTenantPreemption.OVER_QUOTA
        if recorded is None
        else CrossTenantPreemption(recorded)
    )


@dataclass(frozen=True)
class Scheduling:
    """Who waits and who yields in a pool.

    `queue_policy`: what happens when the head of the queue does not fit.
    `aging_seconds`: a waiting request counts one priority higher for each
    such period it has waited (up to critical), so none waits forever behind
    newer, higher-priority ones. `preemption`: which priorities each priority
    may take capacity from (always strictly lower ones).
    `cross_tenant_preemption`: whether those rules reach other tenants'
    allocations (CrossTenantPreemption; `over_quota` for a new pool).
    """

    queue_policy: QueuePolicy = QueuePolicy.STRICT
    aging_seconds: int = DEFAULT_AGING_SECONDS
    preemption: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_PREEMPTION)
    )
    cross_tenant_preemption: CrossTenantPreemption = CrossTenantPreemption.OVER_QUOTA

    def may_preempt(self, by: Priority, victim: Priority) -> bool:
        """Whether a request of priority `by` may take a `victim`'s capacity:
        only a strictly lower priority, and only one the rules name."""
        return victim.rank < by.rank and victim.value in self.preemption.get(
            by.value, ()
        )


def validate_wait(seconds: object) -> None:
    """Check a request's `max_wait_seconds`: whole seconds, 1 to
    MAX_WAIT_SECONDS (a week). Raises InvalidRequestError."""
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        msg = f"max_wait_seconds must be a whole number of seconds, got {seconds!r}"
        raise InvalidRequestError(msg, field="max_wait_seconds")
    if not 1 <= seconds <= MAX_WAIT_SECONDS:
        msg = (
            f"max_wait_seconds must be between 1 and {MAX_WAIT_SECONDS}, got {seconds}"
        )
        raise InvalidRequestError(msg, field="max_wait_seconds")


def validate_scheduling(scheduling: Scheduling) -> None:
    """Check a pool's scheduling settings: a known queue policy, an aging
    period of 1 to MAX_WAIT_SECONDS, preemption rules naming known priorities,
    each only strictly lower ones and each once, a known cross-tenant setting. Raises
    InvalidRequestError naming the field.
    """
    if not isinstance(scheduling.queue_policy, QueuePolicy):
        msg = (
            f"queue_policy must be strict or backfill, got {scheduling.queue_policy!r}"
        )
        raise InvalidRequestError(msg, field="queue_policy")
    if not 1 <= scheduling.aging_seconds <= MAX_WAIT_SECONDS:
        msg = (
            f"aging_seconds must be between 1 and {MAX_WAIT_SECONDS}, "
            f"got {scheduling.aging_seconds}"
        )
        raise InvalidRequestError(msg, field="aging_seconds")
    if not isinstance(scheduling.cross_tenant_preemption, CrossTenantPreemption):
        msg = (
            "cross_tenant_preemption must be over_quota, any or never, got "
            f"{scheduling.cross_tenant_preemption!r}"
        )
        raise InvalidRequestError(msg, field="cross_tenant_preemption")
    known = {p.value for p in Priority}
    for by, victims in scheduling.preemption.items():
        repeated = sorted({v for v in victims if list(victims).count(v) > 1})
        if repeated:
            msg = f"preemption.{by} names {', '.join(repeated)} more than once"
            raise InvalidRequestError(msg, field="preemption")
        for victim in victims:
            if by not in known or victim not in known:
                msg = f"preemption names an unknown priority: {by} -> {victim}"
                raise InvalidRequestError(msg, field="preemption")
            if Priority(victim).rank >= Priority(by).rank:
                msg = f"{by} may only preempt strictly lower priorities, not {victim}"
                raise InvalidRequestError(msg, field="preemption")
