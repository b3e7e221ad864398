"""The Ledger's commands that put requests into a pool.

`request`: a new request is admitted, queued or refused (the decision is
admission.py's, asked once), then provisioned. `serve_queue`: inside every
unit of work that saves a pool with a queue, requests that waited too long
time out and, in queue order, those that now fit are granted, in the same
transaction as whatever freed the room (docs/scheduling.md, "The queue").
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from allocation_ledger.domain.actors import LOCAL_ACTOR, SCHEDULER_ACTOR
from allocation_ledger.domain.admission import Admission, Grant, Queue, Refuse, admit
from allocation_ledger.domain.allocation import Allocation, RequestFacts
from allocation_ledger.domain.allocation_ids import (
    allocation_id_for_request,
    pre_tenant_allocation_id,
)
from allocation_ledger.domain.capacity import fits_as_is
from allocation_ledger.domain.errors import (
    ArgumentChange,
    InvalidRequestError,
    RequestIdConflictError,
)
from allocation_ledger.domain.lease_commands import expire_due_leases
from allocation_ledger.domain.pool import DEFAULT_POOL, Pool
from allocation_ledger.domain.pool_state import Reservation
from allocation_ledger.domain.provisioning import Provisioning
from allocation_ledger.domain.queueing import (
    blocked_by,
    never_granted,
    next_to_grant,
    timed_out,
)
from allocation_ledger.domain.results import RequestResult, StoppedServer
from allocation_ledger.domain.scheduling import validate_wait
from allocation_ledger.domain.unit_of_work import UnitOfWork
from allocation_ledger.domain.values import (
    QUEUE_TIMEOUT,
    AdmissionOptions,
    AllocationRequest,
    AllocationState,
    Dimension,
    Priority,
    Rejection,
    validate_pool_name,
    validate_request_id,
    validate_tenant,
)


class RequestCommands(Provisioning):
    """Requests: admitted on arrival, granted from the queue (a mixin of
    `ledger.Ledger`)."""

    def request(
        self,
        request: AllocationRequest,
        *,
        pool: str = DEFAULT_POOL,
        request_id: str | None = None,
        dry_run: bool = False,
        actor: str = LOCAL_ACTOR,
        wait: bool = False,
        max_wait_seconds: int | None = None,
        preempt: bool = True,
        tenant: str | None = None,
    ) -> RequestResult:
        """Reserve capacity for a request, then provision it.

        Before anything is refused, allocations whose lease already ran out are
        expired in the same transaction, so a late sweep never costs capacity;
        then idle MCP servers the request does not name are reclaimed
        (stopped, longest idle first) as far as it needs their room;
        what that frees goes in one ranking to the queue and the newcomer
        (requests queued with at least its priority, effective, first). A
        request that still does not fit may take the capacity of allocations
        of strictly lower priority that were live before it came (never one
        granted in this same decision), where the pool's policy allows (and
        `preempt` is true). Otherwise, with `wait`, it is queued (holding
        nothing) until room frees or `max_wait_seconds` pass; without, it is
        recorded as rejected, with the reason. Under the pool's strict queue
        policy a newcomer does not pass requests already waiting ahead of it.
        A tenant over its quota in the pool is refused, waiting or not.

        Raises InvalidRequestError for a bad pool name, request_id, tenant or
        max_wait_seconds (1 to MAX_WAIT_SECONDS, and only with `wait`),
        before anything is read or written.
        """
        validate_pool_name(pool)
        if request_id is not None:
            validate_request_id(request_id)
        if max_wait_seconds is not None:
            validate_wait(max_wait_seconds)
            if not wait:
                msg = (
                    "max_wait_seconds bounds how long a queued request waits, "
                    "so it needs wait=true: without wait, a request that does "
                    "not fit is refused at once (add wait=true, or drop "
                    "max_wait_seconds)"
                )
                raise InvalidRequestError(msg, field="max_wait_seconds")
        if tenant is not None:
            validate_tenant(tenant)

        options = AdmissionOptions(
            wait=wait, max_wait_seconds=max_wait_seconds, preempt=preempt
        )

        def body(work: UnitOfWork) -> RequestResult:
            now = self.clock.now()
            if request_id is not None:
                allocation_id = allocation_id_for_request(pool, request_id, tenant)
                existing = _earlier_request(work, pool, request_id, tenant)
                if existing is not None:
                    _check_same_request(
                        existing,
                        request,
                        request_id,
                        tenant=tenant,
                        options=options,
                        dry_run=dry_run,
                    )
                    return RequestResult(
                        existing.snapshot(), None, replayed=True, dry_run=dry_run
                    )
            else:
                allocation_id = self.new_allocation_id()
            target = work.pool(pool, actor=actor)
            needed = target.settings.workers_for(request)
            expired: list[str] = []
            # What is due is expired before any idle MCP server is reclaimed
            # (in `reserve`), and both before anyone is queued or preempted.
            if not fits_as_is(target, request, needed) and target.due(now):
                expired = expire_due_leases(work, target, now, limit=None)
                work.teardown.extend(work.allocation(i).snapshot() for i in expired)
            # The newcomer and the queue share one ranking: first, what waits
            # ahead of it is served (with what expiry just freed); then it is
            # admitted; the rest of the queue is served when the pool saves.
            granted_ahead = (
                self.serve_queue(work, target, ahead_of=request.priority)
                if target.queue
                else []
            )
            decision = admit(
                target,
                request,
                tenant=tenant,
                now=now,
                preempt=preempt,
                wait=wait,
                resources=needed,
                granted_now=granted_ahead,
            )
            if not isinstance(decision, Grant):
                work.require_current()  # never refuse on a cached read
            facts = RequestFacts(
                pool=pool,
                request=request,
                request_id=request_id,
                resources=needed,
                at=now,
                actor=actor,
                tenant=tenant,
                options=options,
            )
            allocation = self._carry_out(
                work,
                target,
                decision,
                allocation_id,
                facts,
                provision_now=not dry_run,
                max_wait_seconds=max_wait_seconds,
            )
            work.add(allocation)
            victims = decision.victims if isinstance(decision, Grant) else ()
            preempted = tuple(v.allocation_id for v in victims)
            tenants = {v.allocation_id: v.tenant for v in victims} | {
                i: work.allocation(i).tenant for i in expired
            }
            if dry_run:
                snapshot = allocation.snapshot()
                work.discard()
                return RequestResult(
                    snapshot, None, dry_run=True, preempted=preempted, tenants=tenants
                )
            position = work.save()
            return RequestResult(
                allocation.snapshot(),
                position,
                expired_first=tuple(expired),
                preempted=preempted,
                tenants=tenants,
            )

        reserved = self._run("request_resources", body)
        if reserved.dry_run or reserved.allocation.state is not AllocationState.PENDING:
            return reserved
        # Provisioning under way, or interrupted before it finished (a retry
        # with the same request_id then takes it up again).
        provisioned = self._provision(reserved, actor=actor)
        return dataclasses.replace(
            provisioned,
            replayed=reserved.replayed,
            expired_first=reserved.expired_first,
            preempted=reserved.preempted,
            tenants=reserved.tenants,
        )

    def _carry_out(
        self,
        work: UnitOfWork,
        pool: Pool,
        decision: Admission,
        allocation_id: str,
        facts: RequestFacts,
        *,
        provision_now: bool,
        max_wait_seconds: int | None,
    ) -> Allocation:
        """Record what admission decided about a new request, in `work`.

        A grant preempts its victims first, then reserves (and, with
        `provision_now`, activates at once when the provisioner needs nothing
        done outside: `_provision_now`); a queued request goes in the pool's
        queue with its deadline; a refusal is recorded with its reason.
        (On a dry run too: the whole unit of work is discarded.)
        """
        now, actor, request = facts["at"], facts["actor"], facts["request"]
        match decision:
            case Grant(victims=victims):
                for victim in victims:
                    self._preempt(
                        work, pool, victim, by=allocation_id, now=now, actor=actor
                    )
                expires_at = now + timedelta(seconds=request.ttl_seconds)
                ports = pool.reserve(
                    allocation_id,
                    request,
                    expires_at=expires_at,
                    at=now,
                    actor=actor,
                    tenant=facts.get("tenant"),
                    resources=facts["resources"],
                )
                work.stopped.extend(
                    StoppedServer(pool.name, name, port) for name, port in ports.stopped
                )
                allocation = Allocation.requested(
                    allocation_id,
                    worker_ports=ports.worker_ports,
                    servers=ports.servers,
                    expires_at=expires_at,
                    **facts,
                )
                if provision_now:
                    self._provision_now(allocation, pool, at=now, actor=actor)
                return allocation
            case Queue(waiting_for=waiting_for):
                deadline = (
                    None
                    if max_wait_seconds is None
                    else now + timedelta(seconds=max_wait_seconds)
                )
                allocation = Allocation.queued(
                    allocation_id, waiting_for=waiting_for, deadline=deadline, **facts
                )
                pool.enqueue(
                    allocation_id,
                    request,
                    deadline=deadline,
                    tenant=facts.get("tenant"),
                    at=now,
                    actor=actor,
                    resources=facts["resources"],
                )
                return allocation
            case Refuse(reason=reason):
                return Allocation.rejected(allocation_id, rejection=reason, **facts)

    def _preempt(
        self,
        work: UnitOfWork,
        pool: Pool,
        victim: Reservation,
        *,
        by: str,
        now: datetime,
        actor: str,
    ) -> None:
        allocation = work.allocation(victim.allocation_id)
        allocation.preempt(by, at=now, actor=actor)
        pool.free(victim.allocation_id, "preempted", at=now, actor=actor)
        work.teardown.append(allocation.snapshot())

    def serve_queue(
        self, work: UnitOfWork, pool: Pool, *, ahead_of: Priority | None = None
    ) -> list[str]:
        """Re-examine the pool's queue and grant, in order, what now fits.

        Runs inside the unit of work that changed the pool (freed room,
        changed its capacity, settings or a quota), before it saves. First,
        requests whose maximum wait passed fail (`queue_timeout`); then those
        that can never be granted in the pool as it now is fail (`exceeds_pool`
        when bigger than the pool's total, `quota_exceeded` when bigger than
        their tenant's quota; `queueing.never_granted`), so nothing waits
        for ever, nor keeps others waiting behind it; then waiting requests
        are granted in queue order while they fit (`queueing.next_to_grant`).

        `ahead_of`: a newcomer's priority; only requests that rank before it
        are granted (the request command, before admitting it). Answers the
        allocation ids granted.
        """
        now = self.clock.now()
        for late in timed_out(pool, now):
            waited_for = blocked_by(pool, late)
            reason = Rejection(
                QUEUE_TIMEOUT,
                waited_for.dimension if waited_for else Dimension.WORKERS,
                waited_for.requested if waited_for else 0,
                waited_for.available if waited_for else 0,
            )
            work.allocation(late.allocation_id).refuse_queued(
                reason, at=now, actor=SCHEDULER_ACTOR
            )
            pool.dequeue(late.allocation_id, "timed_out", at=now, actor=SCHEDULER_ACTOR)
        for hopeless, reason in never_granted(pool):
            work.allocation(hopeless.allocation_id).refuse_queued(
                reason, at=now, actor=SCHEDULER_ACTOR
            )
            pool.dequeue(
                hopeless.allocation_id, "refused", at=now, actor=SCHEDULER_ACTOR
            )
        granted: list[str] = []
        while (entry := next_to_grant(pool, now, ahead_of=ahead_of)) is not None:
            granted.append(entry.allocation_id)
            allocation = work.allocation(entry.allocation_id)
            pool.dequeue(entry.allocation_id, "granted", at=now, actor=SCHEDULER_ACTOR)
            ports = pool.reserve(
                entry.allocation_id,
                entry.request,
                expires_at=now + timedelta(seconds=entry.request.ttl_seconds),
                at=now,
                actor=SCHEDULER_ACTOR,
                tenant=entry.tenant,
            )
            work.stopped.extend(
                StoppedServer(pool.name, name, port) for name, port in ports.stopped
            )
            allocation.grant(
                ports.worker_ports,
                ports.servers,
                resources=pool.reservations[entry.allocation_id].resources,
                at=now,
                actor=SCHEDULER_ACTOR,
            )
            if not self._provision_now(allocation, pool, at=now, actor=SCHEDULER_ACTOR):
                work.to_provision.append(allocation.snapshot())
        return granted


def _earlier_request(
    work: UnitOfWork, pool: str, request_id: str, tenant: str | None
) -> Allocation | None:
    """The allocation an earlier request of `tenant` with this request id
    made in `pool`, if any (a fresh read): at the id derived from all three,
    or, for one recorded before request ids belonged to tenants, at the id
    derived from (pool, request_id) when its tenant is this one. Another
    tenant's is never found: it can be neither replayed nor refused here."""
    found = work.find_allocation(
        allocation_id_for_request(pool, request_id, tenant), fresh=True
    )
    if found is None:
        older = work.find_allocation(
            pre_tenant_allocation_id(pool, request_id), fresh=True
        )
        if older is not None and older.tenant == tenant:
            found = older
    return found


def _check_same_request(
    existing: Allocation,
    request: AllocationRequest,
    request_id: str,
    *,
    tenant: str | None,
    options: AdmissionOptions,
    dry_run: bool,
) -> None:
    """A retry is the same request, or it is refused (invariant 6).

    Compared: the request itself (job, servers, workers, priority, ttl,
    metadata), its tenant, how it asked to be admitted (wait,
    max_wait_seconds, preempt; not for requests recorded before those were
    kept) and dry_run: what was recorded was a real request (a dry run
    records nothing), so a dry run with its request_id is not a retry of it.
    Raises RequestIdConflictError naming every argument that differs.
    """
    changes: list[ArgumentChange] = []
    before: dict[str, Any] = existing.request.as_dict()
    for key, value in request.as_dict().items():
        if before.get(key) != value:
            changes.append(ArgumentChange(key, before.get(key), value))
    if existing.tenant != tenant:
        changes.append(ArgumentChange("tenant", existing.tenant, tenant))
    if existing.options is not None:
        recorded = existing.options.as_dict()
        for key, value in options.as_dict().items():
            if recorded[key] != value:
                changes.append(ArgumentChange(key, recorded[key], value))
    if dry_run:
        changes.append(ArgumentChange("dry_run", False, True))
    if changes:
        raise RequestIdConflictError(request_id, existing.allocation_id, changes)
