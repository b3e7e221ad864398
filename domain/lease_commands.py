"""The Ledger's commands on time: renewing and expiring leases, idle servers.

`expires_at = activated_at + ttl_seconds`; renewing moves it. A sweep expires
due allocations in `(expires_at, id)` order, in batches of SWEEP_BATCH per
unit of work; renewing one whose lease already ran out expires it instead.
MCP servers idle for longer than their pool's idle timeout are stopped and
their ports freed (design contract, "Rules").
"""

from __future__ import annotations

from datetime import datetime

from allocation_ledger.domain.actors import LOCAL_ACTOR, SWEEPER_ACTOR
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.errors import AllocationNotLiveError, LeaseNotDueError
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.provisioning import Provisioning
from allocation_ledger.domain.results import (
    IdleStopResult,
    RenewOutcome,
    StoppedServer,
    SweepResult,
)
from allocation_ledger.domain.tenancy import EVERY_TENANT, Visibility
from allocation_ledger.domain.unit_of_work import UnitOfWork
from allocation_ledger.domain.values import AllocationState, validate_ttl

SWEEP_BATCH = 500
"""Allocations expired per unit of work by a sweep."""


class LeaseCommands(Provisioning):
    """Leases and idle servers (a mixin of `ledger.Ledger`)."""

    def renew(
        self,
        allocation_id: str,
        ttl_seconds: int | None = None,
        *,
        actor: str = LOCAL_ACTOR,
        visibility: Visibility = EVERY_TENANT,
    ) -> RenewOutcome:
        """Move an active allocation's expiry to now + ttl (its own ttl by default).

        An allocation whose lease already ran out is expired, not renewed. One
        of a tenant outside `visibility` raises AllocationNotFoundError, as an
        unknown one does, and changes nothing (not even an expiry).
        """
        if ttl_seconds is not None:
            validate_ttl(ttl_seconds)

        def body(work: UnitOfWork) -> RenewOutcome:
            allocation = work.allocation(allocation_id)
            visibility.check(allocation_id, allocation.tenant)
            now = self.clock.now()
            pool = work.pool_of(allocation)
            if allocation.is_due(now):
                allocation.expire(at=now, actor=SWEEPER_ACTOR)
                pool.free(allocation_id, "expired", at=now, actor=SWEEPER_ACTOR)
                return RenewOutcome(allocation.snapshot(), work.save())
            expires_at = allocation.renew(ttl_seconds, at=now, actor=actor)
            pool.extend_lease(allocation_id, expires_at, at=now, actor=actor)
            return RenewOutcome(allocation.snapshot(), work.save())

        outcome = self._run("renew_allocation", body)
        if outcome.allocation.state is AllocationState.EXPIRED:
            self._deprovision_quietly([outcome.allocation])
            raise AllocationNotLiveError(
                allocation_id, outcome.allocation.state, "renew"
            )
        return outcome

    def expire(self, allocation_id: str, *, actor: str = SWEEPER_ACTOR) -> RenewOutcome:
        """Expire one allocation whose lease has run out."""

        def body(work: UnitOfWork) -> RenewOutcome:
            allocation = work.allocation(allocation_id)
            now = self.clock.now()
            if not allocation.state.is_live:
                raise AllocationNotLiveError(allocation_id, allocation.state, "expire")
            if not allocation.is_due(now):
                assert allocation.expires_at is not None
                raise LeaseNotDueError(allocation_id, allocation.expires_at)
            pool = work.pool_of(allocation)
            allocation.expire(at=now, actor=actor)
            pool.free(allocation_id, "expired", at=now, actor=actor)
            return RenewOutcome(allocation.snapshot(), work.save())

        outcome = self._run("expire", body)
        self._deprovision_quietly([outcome.allocation])
        return outcome

    def expire_due(self, *, actor: str = SWEEPER_ACTOR) -> SweepResult:
        """Expire every allocation whose lease ran out, in (expires_at, id) order."""
        expired: list[Allocation] = []
        position: int | None = None
        for name in self.pool_names():
            while True:

                def body(
                    work: UnitOfWork, name: str = name
                ) -> tuple[list[Allocation], int | None]:
                    pool = work.pool(name)
                    now = self.clock.now()
                    ids = expire_due_leases(
                        work, pool, now, limit=SWEEP_BATCH, actor=actor
                    )
                    done = [work.allocation(i).snapshot() for i in ids]
                    return done, work.save()

                batch, batch_position = self._run("cleanup_expired", body)
                expired.extend(batch)
                position = batch_position or position
                if len(batch) < SWEEP_BATCH:
                    break
        errors = self._deprovision_quietly(expired)
        return SweepResult(
            tuple(a.allocation_id for a in expired),
            position,
            tuple(errors),
            tenants=tuple(a.tenant for a in expired),
        )

    def stop_idle_servers(self, *, actor: str = SWEEPER_ACTOR) -> IdleStopResult:
        """Stop MCP servers idle for longer than their pool's idle timeout."""
        stopped: list[StoppedServer] = []
        position: int | None = None
        for name in self.pool_names():

            def body(
                work: UnitOfWork, name: str = name
            ) -> tuple[list[StoppedServer], int | None]:
                pool = work.pool(name)
                servers = pool.stop_idle_servers(self.clock.now(), actor=actor)
                found = [StoppedServer(name, s.name, s.port) for s in servers]
                return found, work.save()

            batch, batch_position = self._run("stop_idle_servers", body)
            stopped.extend(batch)
            position = batch_position or position
        errors = self._stop_servers_quietly(stopped)
        return IdleStopResult(tuple(stopped), position, tuple(errors))


def expire_due_leases(
    work: UnitOfWork,
    pool: Pool,
    now: datetime,
    *,
    limit: int | None,
    actor: str = SWEEPER_ACTOR,
) -> list[str]:
    """Expire, inside `work`, the pool's reservations whose lease ran out at
    `now`, in (expires_at, id) order, at most `limit` (None: all); answers
    their allocation ids. Their teardown is the caller's to arrange.

    A pending allocation is left alone: its lease counts from its
    activation, which provisioning has not reached yet (one a crash left
    pending is finished by `resume`, not expired)."""
    expired: list[str] = []
    for reservation in pool.due(now):
        if limit is not None and len(expired) >= limit:
            break
        allocation = work.allocation(reservation.allocation_id)
        if allocation.state is AllocationState.PENDING:
            continue
        if allocation.state.is_live:
            allocation.expire(at=now, actor=actor)
        pool.free(reservation.allocation_id, "expired", at=now, actor=actor)
        expired.append(reservation.allocation_id)
    return expired
