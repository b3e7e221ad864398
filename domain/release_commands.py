"""The Ledger's commands that end allocations on request: release and resume.

Releasing gives an allocation's capacity back (a queued one is cancelled: it
held nothing); releasing one already released or expired changes nothing and
says `already_released`, a failed one says `failed` (design contract,
"Rules"). One whose lease has run out is expired instead, as the sweeper
would (and as `renew` does): its usage ends at its `expires_at`, whether the
sweeper came first or the release did. A provisioner that is not instant
tears down between two units of work, the allocation `releasing` meanwhile,
so that `resume` can finish what a crash interrupted.
"""

from __future__ import annotations

from datetime import datetime

from allocation_ledger.domain.actors import LOCAL_ACTOR, SWEEPER_ACTOR
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_decisions import ReleaseResult
from allocation_ledger.domain.errors import ProvisioningError
from allocation_ledger.domain.provisioning import Provisioning
from allocation_ledger.domain.results import ReleaseOutcome, RequestResult
from allocation_ledger.domain.tenancy import EVERY_TENANT, Visibility
from allocation_ledger.domain.unit_of_work import (
    StaleReadError,
    TeardownError,
    UnitOfWork,
)
from allocation_ledger.domain.values import AllocationState, Resources


class _LeaseRanOutError(Exception):
    """Raised out of an instant release's unit of work (writing nothing):
    the allocation's lease has run out, so it is expired instead."""


def _ran_out(allocation: Allocation, now: datetime) -> bool:
    """An active allocation whose lease has run out by `now` (a pending
    one's lease has not begun, `Allocation.is_due`; a `releasing` one was
    asked to go before, and its release goes on)."""
    return allocation.state is not AllocationState.RELEASING and allocation.is_due(now)


class ReleaseCommands(Provisioning):
    """Releasing and resuming allocations (a mixin of `ledger.Ledger`)."""

    def release(
        self,
        allocation_id: str,
        *,
        actor: str = LOCAL_ACTOR,
        visibility: Visibility = EVERY_TENANT,
    ) -> ReleaseOutcome:
        """Give an allocation's capacity back.

        Releasing one that is already released or expired changes nothing and
        says `already_released`; releasing a failed one changes nothing and
        says `failed`. An active one whose lease has run out is
        expired, not released (actor `system:sweeper`, as a sweep would), and
        also says `already_released`. One of a tenant outside `visibility` raises
        AllocationNotFoundError, as an unknown one does, and changes nothing.
        """

        if self.provisions_instantly:
            return self._release_instantly(allocation_id, actor, visibility)

        def look(work: UnitOfWork) -> Allocation:
            allocation = work.allocation(allocation_id)
            visibility.check(allocation_id, allocation.tenant)
            return allocation.snapshot()

        current = self._run("release_resources", look)
        if current.state is AllocationState.QUEUED:
            return self._cancel_queued(allocation_id, actor)
        if not current.state.is_live:
            return self._unchanged_release(current)
        if _ran_out(current, self.clock.now()):
            return self._expire_instead(allocation_id, actor, visibility)
        with self.in_hand.holding(allocation_id):
            return self._release_after_teardown(current, actor)

    def _release_after_teardown(
        self, current: Allocation, actor: str
    ) -> ReleaseOutcome:
        """Mark a live allocation releasing, tear it down, record it released."""
        allocation_id = current.allocation_id
        # Record the intent first: a crash while tearing down then leaves
        # the allocation `releasing`, for `resume` to finish.
        self._mark_releasing(allocation_id, actor)
        try:
            self.provisioner.deprovision(
                allocation_id, current.workers, current.servers, pool=current.pool
            )
        except Exception as error:
            self._mark_releasing(allocation_id, actor)
            raise ProvisioningError(allocation_id, str(error)) from error

        def body(work: UnitOfWork) -> ReleaseOutcome:
            allocation = work.allocation(allocation_id)
            if not allocation.state.is_live:
                return self._unchanged_release(allocation.snapshot())
            now = self.clock.now()
            pool = work.pool_of(allocation)
            allocation.request_release(at=now, actor=actor)
            result = allocation.release(at=now, actor=actor)
            pool.free(allocation_id, "released", at=now, actor=actor)
            return ReleaseOutcome(result, allocation.snapshot(), work.save())

        return self._run("release_resources", body)

    def _release_instantly(
        self, allocation_id: str, actor: str, visibility: Visibility
    ) -> ReleaseOutcome:
        """`release` for an instant provisioner, in one unit of work.

        The same steps in the same order (look, cancel a queued request or
        leave a finished one as it is, deprovision, record the release), but
        read once: an instant provisioner's teardown touches nothing outside,
        so it may run inside the attempt (again, if the attempt is retried).
        """

        def body(work: UnitOfWork) -> ReleaseOutcome:
            allocation = work.allocation(allocation_id)
            visibility.check(allocation_id, allocation.tenant)
            if allocation.state is AllocationState.QUEUED:
                now = self.clock.now()
                pool = work.pool_of(allocation)
                result = allocation.cancel(at=now, actor=actor)
                pool.dequeue(allocation_id, "cancelled", at=now, actor=actor)
                return ReleaseOutcome(result, allocation.snapshot(), work.save())
            if not allocation.state.is_live:
                return self._unchanged_release(allocation.snapshot())
            if _ran_out(allocation, self.clock.now()):
                raise _LeaseRanOutError
            try:
                self.provisioner.deprovision(
                    allocation_id,
                    allocation.workers,
                    allocation.servers,
                    pool=allocation.pool,
                )
            except Exception as error:
                raise TeardownError(error) from error
            now = self.clock.now()
            pool = work.pool_of(allocation)
            allocation.request_release(at=now, actor=actor)
            result = allocation.release(at=now, actor=actor)
            pool.free(allocation_id, "released", at=now, actor=actor)
            return ReleaseOutcome(result, allocation.snapshot(), work.save())

        try:
            return self._run("release_resources", body)
        except _LeaseRanOutError:
            return self._expire_instead(allocation_id, actor, visibility)
        except TeardownError as failed:
            self._mark_releasing(allocation_id, actor)
            raise ProvisioningError(allocation_id, str(failed.error)) from failed.error

    def _expire_instead(
        self, allocation_id: str, actor: str, visibility: Visibility
    ) -> ReleaseOutcome:
        """Expire an allocation whose lease ran out, as the sweeper would
        have, instead of releasing it; then tear it down as a sweep does.

        Renewed (or ended) meanwhile, it is released (or left) as usual."""

        def body(work: UnitOfWork) -> ReleaseOutcome | None:
            allocation = work.allocation(allocation_id)
            now = self.clock.now()
            if not allocation.state.is_live:
                return self._unchanged_release(allocation.snapshot())
            if not _ran_out(allocation, now):
                return None
            pool = work.pool_of(allocation)
            allocation.expire(at=now, actor=SWEEPER_ACTOR)
            pool.free(allocation_id, "expired", at=now, actor=SWEEPER_ACTOR)
            unchanged = self._unchanged_release(allocation.snapshot())
            return ReleaseOutcome(unchanged.result, unchanged.allocation, work.save())

        outcome = self._run("release_resources", body)
        if outcome is None:
            return self.release(allocation_id, actor=actor, visibility=visibility)
        if outcome.position is not None:
            self._deprovision_quietly([outcome.allocation])
        return outcome

    def _cancel_queued(self, allocation_id: str, actor: str) -> ReleaseOutcome:
        """Releasing a queued request takes it out of the queue; it held nothing."""

        def body(work: UnitOfWork) -> ReleaseOutcome:
            allocation = work.allocation(allocation_id)
            if allocation.state is not AllocationState.QUEUED:
                raise StaleReadError  # granted or timed out meanwhile: look again
            now = self.clock.now()
            pool = work.pool_of(allocation)
            result = allocation.cancel(at=now, actor=actor)
            pool.dequeue(allocation_id, "cancelled", at=now, actor=actor)
            return ReleaseOutcome(result, allocation.snapshot(), work.save())

        outcome = self._run("release_resources", body)
        return outcome

    def _mark_releasing(self, allocation_id: str, actor: str) -> None:
        def body(work: UnitOfWork) -> None:
            allocation = work.allocation(allocation_id)
            if allocation.state.is_live:
                allocation.request_release(at=self.clock.now(), actor=actor)
                work.save()

        self._run("release_resources", body)

    @staticmethod
    def _unchanged_release(allocation: Allocation) -> ReleaseOutcome:
        status = (
            "failed"
            if allocation.state is AllocationState.FAILED
            else "already_released"
        )
        result = ReleaseResult(
            status=status,
            allocation_id=allocation.allocation_id,
            freed=Resources(),
            released_at=allocation.ended_at,
            duration_seconds=None,
        )
        return ReleaseOutcome(result, allocation, None)

    def resume(self, allocation_id: str, *, actor: str = SWEEPER_ACTOR) -> Allocation:
        """Finish what an interrupted command left half done.

        A `pending` allocation is provisioned (again) and activated, or failed;
        a `releasing` one is deprovisioned (again) and released. Anything else
        is left as it is. Safe to call more than once, from any process.
        """

        def look(work: UnitOfWork) -> Allocation:
            return work.allocation(allocation_id, fresh=True).snapshot()

        current = self._run("resume", look)
        if allocation_id in self.in_hand:
            return current  # a command of this process is at it right now
        if current.state is AllocationState.PENDING:
            return self._provision(RequestResult(current, None), actor=actor).allocation
        if current.state is AllocationState.RELEASING:
            return self.release(allocation_id, actor=actor).allocation
        return current
