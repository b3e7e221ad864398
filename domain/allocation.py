"""The Allocation aggregate: one request for capacity, from request to its end.

This module has its events (each with the stable TOPIC stored history names),
the state they build, how a request is recorded (`requested`, `rejected`,
`queued`) and `RequestFacts`, what every request records; the commands that
move an allocation along are in allocation_decisions.py
(`AllocationDecisions`, mixed in here).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any, NotRequired, TypedDict, Unpack

from eventsourcing.domain import Aggregate

from allocation_ledger.domain.allocation_decisions import AllocationDecisions
from allocation_ledger.domain.allocation_ids import allocation_uuid, worker_id
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot
from allocation_ledger.domain.values import (
    AdmissionOptions,
    AllocationRequest,
    AllocationState,
    Rejection,
    Resources,
)


class RequestFacts(TypedDict):
    """What the Requested event of every request records, whatever comes of it.

    Built once per request and passed as keywords to the constructor of its
    outcome: `Allocation.requested` (its capacity held at once), `queued` or
    `rejected` (holding nothing). `resources`: what it holds while live, in
    millicores, MiB and workers (its workers, `PoolSettings.workers_for`;
    its MCP servers' instances hold their costs themselves); `at`: the
    ledger clock's time; `actor`: who asked; `tenant`: whose quota it counts
    against (none: nobody's); `options`: how it asked to be admitted (wait,
    max_wait_seconds, preempt), kept so a retry can be compared.
    """

    pool: str
    request: AllocationRequest
    request_id: str | None
    resources: Resources
    at: datetime
    actor: str
    tenant: NotRequired[str | None]
    options: NotRequired[AdmissionOptions]


class Allocation(AllocationDecisions, Aggregate):
    """One request for capacity: its events and state here, its commands in
    AllocationDecisions."""

    TOPIC = "allocation-ledger:allocation"

    class Event(Aggregate.Event):
        TOPIC = "allocation-ledger:allocation:event"
        actor: str

    class Requested(Event, Aggregate.Created):
        """A request was made. Unless a Rejected follows, its capacity is held."""

        TOPIC = "allocation-ledger:allocation:requested"
        allocation_id: str
        pool: str
        request: dict[str, Any]
        request_id: str | None
        resources: dict[str, int]
        worker_ports: list[int]
        servers: list[list[Any]]  # [name, port, started]
        expires_at: datetime | None
        tenant: str | None = None
        options: dict[str, Any] | None = None
        """`AdmissionOptions.as_dict()`; None in events recorded before the
        options were kept (a retry of those is not compared on them)."""

        def apply(self, aggregate: Allocation) -> None:
            aggregate.allocation_id = self.allocation_id
            aggregate.pool = self.pool
            aggregate.request = AllocationRequest.restore(self.request)
            aggregate.request_id = self.request_id
            aggregate.resources = Resources.from_dict(self.resources)
            aggregate.workers = [
                WorkerSlot(worker_id(self.allocation_id, i), port)
                for i, port in enumerate(self.worker_ports)
            ]
            aggregate.servers = [
                ServerSlot(str(name), int(port), bool(started))
                for name, port, started in self.servers
            ]
            aggregate.state = AllocationState.PENDING
            aggregate.requested_at = self.timestamp
            aggregate.expires_at = self.expires_at
            aggregate.requested_by = self.actor
            aggregate.tenant = self.tenant
            options = self.options
            aggregate.options = (
                None if options is None else AdmissionOptions.from_dict(options)
            )

    class Rejected(Event):
        TOPIC = "allocation-ledger:allocation:rejected"
        reason: dict[str, Any]

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.FAILED
            aggregate.rejection = Rejection.from_dict(self.reason)
            aggregate.expires_at = None
            aggregate.ended_at = self.timestamp

    class Queued(Event):
        """It did not fit and waits for room, holding nothing meanwhile."""

        TOPIC = "allocation-ledger:allocation:queued"
        deadline: datetime | None
        reason: dict[str, Any]

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.QUEUED
            aggregate.queue_deadline = self.deadline
            aggregate.waiting_for = Rejection.from_dict(self.reason)
            aggregate.expires_at = None

    class Granted(Event):
        """Room was found for a queued request: its capacity is now held."""

        TOPIC = "allocation-ledger:allocation:granted"
        worker_ports: list[int]
        servers: list[list[Any]]  # [name, port, started]
        expires_at: datetime
        # What the pool reserved at the grant (the pool's sizes then, which
        # may differ from those at the request); None in older histories.
        resources: dict[str, int] | None = None

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.PENDING
            if self.resources is not None:
                aggregate.resources = Resources.from_dict(self.resources)
            aggregate.workers = [
                WorkerSlot(worker_id(aggregate.allocation_id, i), port)
                for i, port in enumerate(self.worker_ports)
            ]
            aggregate.servers = [
                ServerSlot(str(name), int(port), bool(started))
                for name, port, started in self.servers
            ]
            aggregate.expires_at = self.expires_at
            aggregate.queue_deadline = None

    class Preempted(Event):
        """Its capacity went to a request of higher priority."""

        TOPIC = "allocation-ledger:allocation:preempted"
        by: str

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.PREEMPTED
            aggregate.preempted_by = self.by
            aggregate.ended_at = self.timestamp

    class Activated(Event):
        TOPIC = "allocation-ledger:allocation:activated"
        worker_endpoints: dict[str, str]
        server_endpoints: dict[str, str]
        expires_at: datetime

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.ACTIVE
            aggregate.endpoints = Endpoints(
                dict(self.worker_endpoints), dict(self.server_endpoints)
            )
            aggregate.activated_at = self.timestamp
            aggregate.expires_at = self.expires_at

    class Renewed(Event):
        TOPIC = "allocation-ledger:allocation:renewed"
        ttl_seconds: int
        expires_at: datetime

        def apply(self, aggregate: Allocation) -> None:
            aggregate.expires_at = self.expires_at
            aggregate.renewals += 1

    class ReleaseRequested(Event):
        TOPIC = "allocation-ledger:allocation:release-requested"

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.RELEASING

    class Released(Event):
        TOPIC = "allocation-ledger:allocation:released"

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.RELEASED
            aggregate.ended_at = self.timestamp

    class Expired(Event):
        TOPIC = "allocation-ledger:allocation:expired"
        expires_at: datetime

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.EXPIRED
            aggregate.ended_at = self.timestamp

    class Failed(Event):
        TOPIC = "allocation-ledger:allocation:failed"
        error: str

        def apply(self, aggregate: Allocation) -> None:
            aggregate.state = AllocationState.FAILED
            aggregate.error = self.error
            aggregate.ended_at = self.timestamp

    def __init__(self) -> None:
        self.allocation_id = ""
        self.pool = ""
        self.request = AllocationRequest(job_id="-")
        self.request_id: str | None = None
        self.resources = Resources()
        self.workers: list[WorkerSlot] = []
        self.servers: list[ServerSlot] = []
        self.state = AllocationState.PENDING
        self.requested_at: datetime | None = None
        self.requested_by = ""
        self.activated_at: datetime | None = None
        self.expires_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.endpoints = Endpoints({}, {})
        self.rejection: Rejection | None = None
        self.error: str | None = None
        self.renewals = 0
        self.tenant: str | None = None
        self.options: AdmissionOptions | None = None
        self.queue_deadline: datetime | None = None
        self.waiting_for: Rejection | None = None
        """What it waited for when it was queued (the dimension short)."""
        self.preempted_by: str | None = None

    # -- creation ------------------------------------------------------------

    @classmethod
    def requested(
        cls,
        allocation_id: str,
        *,
        worker_ports: tuple[int, ...],
        servers: tuple[tuple[str, int, bool], ...],
        expires_at: datetime | None,
        **facts: Unpack[RequestFacts],
    ) -> Allocation:
        """A request, as its Requested event: with capacity held at once, the
        worker ports and MCP servers it was given (name, port, started now) and
        its provisional lease expiry. Every allocation begins here; `rejected`
        and `queued` ones with no ports and no expiry (holding nothing)."""
        return cls._create(
            cls.Requested,
            id=allocation_uuid(allocation_id),
            timestamp=facts["at"],
            actor=facts["actor"],
            allocation_id=allocation_id,
            pool=facts["pool"],
            request=facts["request"].as_dict(),
            request_id=facts["request_id"],
            resources=facts["resources"].as_dict(),
            worker_ports=list(worker_ports),
            servers=[[name, port, started] for name, port, started in servers],
            expires_at=expires_at,
            tenant=facts.get("tenant"),
            options=facts.get("options", AdmissionOptions()).as_dict(),
        )

    @classmethod
    def rejected(
        cls, allocation_id: str, *, rejection: Rejection, **facts: Unpack[RequestFacts]
    ) -> Allocation:
        """A request refused at once, with the reason; it holds nothing."""
        allocation = cls.requested(
            allocation_id, worker_ports=(), servers=(), expires_at=None, **facts
        )
        allocation.trigger_event(
            cls.Rejected,
            timestamp=facts["at"],
            actor=facts["actor"],
            reason=rejection.as_dict(),
        )
        return allocation

    @classmethod
    def queued(
        cls,
        allocation_id: str,
        *,
        waiting_for: Rejection,
        deadline: datetime | None,
        **facts: Unpack[RequestFacts],
    ) -> Allocation:
        """A request that waits for room instead of being refused, holding
        nothing meanwhile; `deadline`: when it times out (None: never)."""
        allocation = cls.requested(
            allocation_id, worker_ports=(), servers=(), expires_at=None, **facts
        )
        allocation.trigger_event(
            cls.Queued,
            timestamp=facts["at"],
            actor=facts["actor"],
            deadline=deadline,
            reason=waiting_for.as_dict(),
        )
        return allocation

    def snapshot(self) -> Allocation:
        """A copy that later commands cannot change, cheap to take.

        Every event's `apply` rebinds attributes to new values and never
        changes one in place, so a shallow copy is a consistent snapshot.
        """
        clone = copy.copy(self)
        clone.__dict__["_pending_events"] = []
        return clone
