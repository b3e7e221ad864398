"""The Allocation's decisions: the commands that move an allocation along.

Granting a queued request, refusing it, preempting, activating, renewing,
releasing, expiring and failing: each checks the allocation's state, then
triggers one of the Allocation's events, whose `apply` changes the state.
The events, the state they build and the allocation's creation (requested,
rejected, queued) are in allocation.py; `Allocation` is
`AllocationDecisions` mixed into an eventsourcing Aggregate. Errors: a
command on an allocation that has ended raises AllocationNotLiveError, on
one in the wrong live state AllocationStateError. Times are the ledger's
clock (`at`); `actor` is recorded on every event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from eventsourcing.domain import Aggregate

from allocation_ledger.domain.errors import AllocationNotLiveError, AllocationStateError
from allocation_ledger.domain.provisioner import Endpoints
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Rejection,
    Resources,
)

if TYPE_CHECKING:
    _Aggregate = Aggregate
else:
    _Aggregate = object


@dataclass(frozen=True)
class ReleaseResult:
    """What a release did. `status` is released, already_released or failed."""

    status: str
    allocation_id: str
    freed: Resources
    released_at: datetime | None
    duration_seconds: float | None


class AllocationDecisions(_Aggregate):
    """The Allocation aggregate's commands (a mixin of `allocation.Allocation`)."""

    if TYPE_CHECKING:
        # What allocation.Allocation defines: its state (see its __init__)
        # and the events the commands trigger.
        allocation_id: str
        request: AllocationRequest
        resources: Resources
        state: AllocationState
        requested_at: datetime | None
        activated_at: datetime | None
        expires_at: datetime | None
        Rejected: ClassVar[type[Aggregate.Event]]
        Granted: ClassVar[type[Aggregate.Event]]
        Preempted: ClassVar[type[Aggregate.Event]]
        Activated: ClassVar[type[Aggregate.Event]]
        Renewed: ClassVar[type[Aggregate.Event]]
        ReleaseRequested: ClassVar[type[Aggregate.Event]]
        Released: ClassVar[type[Aggregate.Event]]
        Expired: ClassVar[type[Aggregate.Event]]
        Failed: ClassVar[type[Aggregate.Event]]

    @property
    def holds_capacity(self) -> bool:
        return self.state.is_live

    def is_due(self, now: datetime) -> bool:
        """Whether its lease has run out by `now`. A pending allocation's
        lease has not begun (it counts from activation, however long
        provisioning takes), so it is never due."""
        return (
            self.state.lease_runs
            and self.expires_at is not None
            and self.expires_at <= now
        )

    def grant(
        self,
        worker_ports: tuple[int, ...],
        servers: tuple[tuple[str, int, bool], ...],
        *,
        resources: Resources | None = None,
        at: datetime,
        actor: str,
    ) -> None:
        """Room was found: hold `resources` (what the pool reserved, at the
        pool's sizes now) on these ports. Raises if not queued."""
        self._require(AllocationState.QUEUED, "grant")
        self.trigger_event(
            self.Granted,
            timestamp=at,
            actor=actor,
            resources=None if resources is None else resources.as_dict(),
            worker_ports=list(worker_ports),
            servers=[[name, port, started] for name, port, started in servers],
            expires_at=at + timedelta(seconds=self.request.ttl_seconds),
        )

    def refuse_queued(self, rejection: Rejection, *, at: datetime, actor: str) -> None:
        """A queued request that will not be granted: its wait ran out
        (`queue_timeout`), or it can never be granted in its pool as it is
        now (`exceeds_pool`, `quota_exceeded`). It held nothing."""
        self._require(AllocationState.QUEUED, "refuse")
        self.trigger_event(
            self.Rejected, timestamp=at, actor=actor, reason=rejection.as_dict()
        )

    def preempt(self, by: str, *, at: datetime, actor: str) -> None:
        if not self.state.is_live:
            raise AllocationNotLiveError(self.allocation_id, self.state, "preempt")
        self.trigger_event(self.Preempted, timestamp=at, actor=actor, by=by)

    def activate(self, endpoints: Endpoints, *, at: datetime, actor: str) -> None:
        self._require(AllocationState.PENDING, "activate")
        self.trigger_event(
            self.Activated,
            timestamp=at,
            actor=actor,
            worker_endpoints=dict(endpoints.workers),
            server_endpoints=dict(endpoints.servers),
            expires_at=at + timedelta(seconds=self.request.ttl_seconds),
        )

    def renew(self, ttl_seconds: int | None, *, at: datetime, actor: str) -> datetime:
        self._require(AllocationState.ACTIVE, "renew")
        ttl = self.request.ttl_seconds if ttl_seconds is None else ttl_seconds
        expires_at = at + timedelta(seconds=ttl)
        self.trigger_event(
            self.Renewed,
            timestamp=at,
            actor=actor,
            ttl_seconds=ttl,
            expires_at=expires_at,
        )
        return expires_at

    def cancel(self, *, at: datetime, actor: str) -> ReleaseResult:
        """Release a queued request: it held nothing, so it ends at once."""
        self._require(AllocationState.QUEUED, "cancel")
        self.trigger_event(self.Released, timestamp=at, actor=actor)
        return ReleaseResult(
            status="released",
            allocation_id=self.allocation_id,
            freed=Resources(),
            released_at=at,
            duration_seconds=0.0,
        )

    def request_release(self, *, at: datetime, actor: str) -> None:
        if self.state is AllocationState.RELEASING:
            return
        if not self.state.is_live:
            raise AllocationNotLiveError(self.allocation_id, self.state, "release")
        self.trigger_event(self.ReleaseRequested, timestamp=at, actor=actor)

    def release(self, *, at: datetime, actor: str) -> ReleaseResult:
        self._require(AllocationState.RELEASING, "complete the release of")
        self.trigger_event(self.Released, timestamp=at, actor=actor)
        return ReleaseResult(
            status="released",
            allocation_id=self.allocation_id,
            freed=self.resources,
            released_at=at,
            duration_seconds=self.held_seconds(at),
        )

    def expire(self, *, at: datetime, actor: str) -> None:
        if not self.state.is_live:
            raise AllocationNotLiveError(self.allocation_id, self.state, "expire")
        assert self.expires_at is not None
        self.trigger_event(
            self.Expired, timestamp=at, actor=actor, expires_at=self.expires_at
        )

    def fail(self, error: str, *, at: datetime, actor: str) -> None:
        if not self.state.is_live:
            raise AllocationNotLiveError(self.allocation_id, self.state, "fail")
        self.trigger_event(self.Failed, timestamp=at, actor=actor, error=error)

    def held_seconds(self, until: datetime) -> float:
        start = self.activated_at or self.requested_at
        if start is None:
            return 0.0
        return max((until - start).total_seconds(), 0.0)

    def _require(self, state: AllocationState, action: str) -> None:
        if self.state is state:
            return
        if self.state.is_terminal:
            raise AllocationNotLiveError(self.allocation_id, self.state, action)
        raise AllocationStateError(self.allocation_id, self.state, action)
