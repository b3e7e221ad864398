"""Making decisions real: provisioning and tearing down around units of work.

The ledger decides; a provisioner (the `Provisioner` port) makes it real
(design contract, "Provisioning"). When provisioning a granted request needs
nothing done outside (the provisioner's `instant_endpoints` answers its
endpoints: always for the endpoints-only provisioner; for the process
provisioner when every server it names already runs and its pool starts no
workers), reserve and activate share one transaction. Otherwise the
provisioner is called between two: the allocation is `pending` meanwhile,
and activated (or failed, its capacity given back) in a second unit of work.
What a committed unit of work tore down or stopped is deprovisioned after
the commit; a failure there is reported, not raised.

The slow path keeps two promises (issue 11, "What the slow path must keep"):
the lease counts from activation (the pool's reservation is moved to the
allocation's `expires_at` in the unit of work that activates it), and an
allocation that ended while its provisioning ran has what provisioning set
up torn down again once it returns (its teardown, and the stop of every
server of it the pool no longer records on that port). A failed provisioning
gives back everything: the capacity, and the servers nobody else uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime

from allocation_ledger.domain.actors import SCHEDULER_ACTOR
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.command_runner import UnitOfWorkApplication
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.provisioner import Endpoints
from allocation_ledger.domain.results import RequestResult, StoppedServer
from allocation_ledger.domain.unit_of_work import UnitOfWork
from allocation_ledger.domain.values import AllocationState

PROVISIONING_FAILED = "provisioning_failed"
"""The reason code of an allocation whose provisioning failed (its `error`
says what failed)."""


class Provisioning(UnitOfWorkApplication):
    """The provisioning steps the Ledger's commands share (a mixin base)."""

    @property
    def provisions_instantly(self) -> bool:
        """Whether the provisioner says all it ever does is work out endpoints
        (`instant = True`): a release is then one unit of work too."""
        return bool(getattr(self.provisioner, "instant", False))

    def _provision_now(
        self, allocation: Allocation, pool: Pool, *, at: datetime, actor: str
    ) -> bool:
        """Provision inside the unit of work, if that needs nothing done
        outside: activate the allocation with the endpoints the provisioner's
        `instant_endpoints` answers (or fail it, its capacity back, if that
        raised). Answers False, changing nothing, when the provisioner has
        work to do: the allocation stays `pending`, for `_provision` after
        the commit (which the observer is told of then)."""
        done = self.observer.provisioning(pool.name)
        try:
            endpoints = self.provisioner.instant_endpoints(
                allocation.allocation_id,
                allocation.workers,
                allocation.servers,
                pool=pool.name,
            )
        except Exception as error:  # noqa: BLE001 - any provisioner failure
            done("failed")
            allocation.fail(str(error) or type(error).__name__, at=at, actor=actor)
            pool.free(allocation.allocation_id, "failed", at=at, actor=actor)
            return True
        if endpoints is None:
            return False
        done("active")
        allocation.activate(
            Endpoints(dict(endpoints.workers), dict(endpoints.servers)),
            at=at,
            actor=actor,
        )
        return True

    def _provision(self, reserved: RequestResult, *, actor: str) -> RequestResult:
        """Provision a pending allocation, then activate it in a unit of work
        (or fail it, giving its capacity back, if the provisioner raised).

        Activation moves the pool's lease to the allocation's new expiry
        (activation + ttl), so both agree. An allocation that ended while the
        provisioner ran is not activated: what provisioning set up is torn
        down again after the unit of work (`_undo_provisioning`).
        """
        pending = reserved.allocation
        done = self.observer.provisioning(pending.pool)
        try:
            with self.in_hand.holding(pending.allocation_id):
                endpoints = self.provisioner.provision(
                    pending.allocation_id,
                    pending.workers,
                    pending.servers,
                    pool=pending.pool,
                )
        except Exception as error:  # noqa: BLE001 - any provisioner failure
            done("failed")
            return self._fail_provisioning(
                reserved, str(error) or type(error).__name__, actor
            )
        done("active")

        def activate(work: UnitOfWork) -> RequestResult:
            allocation = work.allocation(pending.allocation_id)
            if allocation.state is not AllocationState.PENDING:
                if allocation.state is not AllocationState.ACTIVE:
                    self._undo_provisioning(work, allocation, actor)
                return RequestResult(allocation.snapshot(), reserved.position)
            now = self.clock.now()
            allocation.activate(
                Endpoints(dict(endpoints.workers), dict(endpoints.servers)),
                at=now,
                actor=actor,
            )
            pool = work.pool_of(allocation)
            held = pool.reservations.get(allocation.allocation_id)
            assert allocation.expires_at is not None
            if held is not None and held.expires_at != allocation.expires_at:
                pool.extend_lease(
                    allocation.allocation_id, allocation.expires_at, at=now, actor=actor
                )
            position = work.save()
            return RequestResult(
                allocation.snapshot(),
                position,
                expired_first=reserved.expired_first,
            )

        return self._run("activate", activate)

    def _undo_provisioning(
        self, work: UnitOfWork, allocation: Allocation, actor: str
    ) -> None:
        """Tear down, after `work`, what provisioning set up for an allocation
        that ended (or began its release) meanwhile: its own resources, and
        the process of each of its servers that the pool no longer records
        on the port it had. Its servers that no live allocation uses are
        recorded stopped here (ports free), not left idle: they were being
        started for a request that is gone. Decided on fresh reads."""
        work.require_current()
        pool = work.pool(allocation.pool)
        work.teardown.append(allocation.snapshot())
        now = self.clock.now()
        for slot in allocation.servers:
            recorded = pool.servers.get(slot.name)
            if recorded is not None and recorded.port == slot.port:
                port = pool.stop_unused_server(
                    slot.name, at=now, actor=actor, reason="start_abandoned"
                )
                if port is not None:
                    work.stopped.append(StoppedServer(pool.name, slot.name, slot.port))
            else:
                work.stopped.append(StoppedServer(pool.name, slot.name, slot.port))
        if pool.pending_events:
            work.save()

    def _fail_provisioning(
        self, reserved: RequestResult, error: str, actor: str
    ) -> RequestResult:
        """Fail a pending allocation whose provisioning raised `error`: its
        capacity back, and each of its servers that no live allocation uses
        any more recorded stopped (its port free; its process, if any, stopped
        after the commit). Its teardown follows, for whatever provisioning
        set up before it failed."""
        allocation_id = reserved.allocation.allocation_id

        def fail(work: UnitOfWork) -> RequestResult:
            allocation = work.allocation(allocation_id)
            if allocation.state is AllocationState.ACTIVE:
                return RequestResult(allocation.snapshot(), reserved.position)
            if allocation.state is not AllocationState.PENDING:
                self._undo_provisioning(work, allocation, actor)
                return RequestResult(allocation.snapshot(), reserved.position)
            now = self.clock.now()
            pool = work.pool_of(allocation)
            allocation.fail(error, at=now, actor=actor)
            pool.free(allocation_id, "failed", at=now, actor=actor)
            for slot in allocation.servers:
                port = pool.stop_unused_server(slot.name, at=now, actor=actor)
                if port is not None:
                    work.stopped.append(StoppedServer(pool.name, slot.name, port))
            work.teardown.append(allocation.snapshot())
            return RequestResult(allocation.snapshot(), work.save())

        return self._run("fail_provisioning", fail)

    def _after_commit(self, work: UnitOfWork) -> None:
        """Side effects of a committed unit of work, outside the lock: tear
        down what it ended, stop the servers it stopped, provision what the
        queue was granted and could not provision at once).

        Nothing here may fail the command, which is committed: a grant whose
        activation cannot be saved (the store failed) stays pending, for a
        retry of its request or the sweeper's `resume` to finish."""
        self._deprovision_quietly(work.teardown)
        self._stop_servers_quietly(work.stopped)
        for granted in work.to_provision:
            with contextlib.suppress(Exception):
                self._provision(RequestResult(granted, None), actor=SCHEDULER_ACTOR)

    def _deprovision_quietly(self, allocations: Sequence[Allocation]) -> list[str]:
        """Tear allocations down; each failure is reported as a line, not raised."""
        errors: list[str] = []
        for allocation in allocations:
            try:
                self.provisioner.deprovision(
                    allocation.allocation_id,
                    allocation.workers,
                    allocation.servers,
                    pool=allocation.pool,
                )
            except Exception as error:  # noqa: BLE001 - reported, not raised
                errors.append(f"{allocation.allocation_id}: {error}")
        return errors

    def _stop_servers_quietly(self, servers: Sequence[StoppedServer]) -> list[str]:
        """Stop MCP server processes; each failure is reported, not raised."""
        errors: list[str] = []
        for server in servers:
            try:
                self.provisioner.stop_server(server.name, server.port, pool=server.pool)
            except Exception as error:  # noqa: BLE001 - reported, not raised
                errors.append(f"{server.name}: {error}")
        return errors
