"""The Ledger's commands on pools: create, configure, capacity, quotas, scheduling.

Settings are checked before any unit of work runs (pool_settings.py,
scheduling.py), and each command saves the pool's new events in one unit of
work. Lowering capacity or a quota never evicts: it only refuses new
requests until usage drops (design contract, "Rules").
"""

from __future__ import annotations

import copy

from allocation_ledger.domain.actors import LOCAL_ACTOR
from allocation_ledger.domain.command_runner import UnitOfWorkApplication
from allocation_ledger.domain.errors import InvalidRequestError, PoolExistsError
from allocation_ledger.domain.pool import DEFAULT_POOL, Pool
from allocation_ledger.domain.pool_settings import (
    PoolSettings,
    validate_capacity,
    validate_settings,
)
from allocation_ledger.domain.ports import Span, own_conflict, validate_worker_room
from allocation_ledger.domain.results import PoolResult, StoppedServer
from allocation_ledger.domain.scheduling import Scheduling, validate_scheduling
from allocation_ledger.domain.unit_of_work import UnitOfWork, cached_pool_uuid
from allocation_ledger.domain.values import (
    Resources,
    validate_pool_name,
    validate_tenant,
)


class PoolCommands(UnitOfWorkApplication):
    """The Ledger's commands on pools (a mixin of `ledger.Ledger`)."""

    def create_pool(
        self,
        name: str,
        settings: PoolSettings | None = None,
        *,
        actor: str = LOCAL_ACTOR,
    ) -> PoolResult:
        """Create a pool (default settings unless given), with port ranges of
        its own. Raises PoolExistsError, or InvalidRequestError for a bad name
        or settings, or past the number of pools the port space allows."""
        validate_pool_name(name)
        chosen = settings or PoolSettings()
        validate_settings(chosen)

        def body(work: UnitOfWork) -> PoolResult:
            if work.get(cached_pool_uuid(name), fresh=True) is not None:
                raise PoolExistsError(name)
            pool = work.create_pool(name, chosen, actor=actor)
            return _saved(work, pool, created=True)

        return self._run("create_pool", body)

    def configure_pool(
        self,
        name: str,
        *,
        capacity: Resources | None = None,
        worker_size: Resources | None = None,
        server_costs: dict[str, Resources] | None = None,
        idle_timeout_seconds: int | None = None,
        server_idle_timeouts: dict[str, int] | None = None,
        worker_ports: Span | None = None,
        mcp_ports: Span | None = None,
        actor: str = LOCAL_ACTOR,
    ) -> PoolResult:
        """Create the pool with these settings, or change the ones given.

        `worker_ports` and `mcp_ports`: its port ranges, (first, last) both
        included (None: kept; a new pool's by the rule of domain/ports.py).
        New ranges apply to the ports handed out from now on: what live
        allocations hold outside them stays theirs until given back, and an
        idle MCP server outside the new MCP range is recorded stopped (and
        its process stopped once this commits). The pool's workers must fit
        its worker range. Raises InvalidRequestError naming the field
        (`worker_ports`, `mcp_ports`, `workers`, ...), nothing written.
        """
        validate_pool_name(name)

        def body(work: UnitOfWork) -> PoolResult:
            found = work.get(cached_pool_uuid(name))
            base = found.settings if isinstance(found, Pool) else PoolSettings()
            settings = PoolSettings(
                capacity=capacity if capacity is not None else base.capacity,
                worker_size=worker_size
                if worker_size is not None
                else base.worker_size,
                server_costs=(
                    server_costs if server_costs is not None else base.server_costs
                ),
                idle_timeout_seconds=(
                    idle_timeout_seconds
                    if idle_timeout_seconds is not None
                    else base.idle_timeout_seconds
                ),
                server_idle_timeouts=(
                    server_idle_timeouts
                    if server_idle_timeouts is not None
                    else base.server_idle_timeouts
                ),
            )
            validate_settings(settings)
            now = self.clock.now()
            if not isinstance(found, Pool):
                pool = work.create_pool(
                    name, settings, actor=actor, workers=worker_ports, mcp=mcp_ports
                )
                return _saved(work, pool, created=True)
            ports = found.ports.with_spans(workers=worker_ports, mcp=mcp_ports)
            if ports != found.ports:
                registry = work.registry(actor=actor)
                neighbours, held = work.port_neighbours(registry, name)
                work.check_ports(
                    ports, neighbours, held, workers=settings.capacity.workers
                )
                mine = own_conflict(
                    ports,
                    (s.port for s in found.servers.values() if s.references),
                    found.worker_ports,
                )
                if mine is not None:
                    work.require_current()  # never refuse on a cached read
                    msg = mine.describe(ports)
                    raise InvalidRequestError(msg, field=mine.field)
                registry.change_ports(name, ports, at=now, actor=actor)
                stopped = found.change_ports(ports, at=now, actor=actor)
                work.stopped.extend(
                    StoppedServer(name, server, port) for server, port in stopped
                )
            else:
                try:
                    validate_worker_room(ports, settings.capacity.workers)
                except InvalidRequestError:
                    work.require_current()  # never refuse on a cached read
                    raise
            found.change_capacity(settings.capacity, at=now, actor=actor)
            found.reconfigure(settings, at=now, actor=actor)
            return _saved(work, found, created=False)

        return self._run("configure_pool", body)

    def set_capacity(
        self, capacity: Resources, *, pool: str = DEFAULT_POOL, actor: str = LOCAL_ACTOR
    ) -> PoolResult:
        """Set a pool's totals. Lowering never evicts: it only refuses new requests."""
        validate_pool_name(pool)
        validate_capacity(capacity)
        if pool != DEFAULT_POOL:

            def exists(work: UnitOfWork) -> None:
                work.pool(pool)

            self._run("set_capacity", exists)
        return self.configure_pool(pool, capacity=capacity, actor=actor)

    def set_quota(
        self,
        tenant: str,
        limits: Resources | None,
        *,
        pool: str = DEFAULT_POOL,
        actor: str = LOCAL_ACTOR,
    ) -> PoolResult:
        """Limit what a tenant may hold at once in a pool (None: no limit).

        Lowering a quota below what the tenant holds evicts nothing; it only
        refuses the tenant's new requests until it holds less.
        """
        validate_pool_name(pool)
        validate_tenant(tenant)
        if limits is not None:
            validate_capacity(limits)

        def body(work: UnitOfWork) -> PoolResult:
            target = work.pool(pool, actor=actor)
            target.set_quota(tenant, limits, at=self.clock.now(), actor=actor)
            return _saved(work, target, created=False)

        return self._run("set_quota", body)

    def configure_scheduling(
        self,
        scheduling: Scheduling,
        *,
        pool: str = DEFAULT_POOL,
        actor: str = LOCAL_ACTOR,
    ) -> PoolResult:
        """Set a pool's queue policy, aging and preemption rules."""
        validate_pool_name(pool)
        validate_scheduling(scheduling)

        def body(work: UnitOfWork) -> PoolResult:
            target = work.pool(pool, actor=actor)
            target.configure_scheduling(scheduling, at=self.clock.now(), actor=actor)
            return _saved(work, target, created=False)

        return self._run("configure_scheduling", body)


def _saved(work: UnitOfWork, pool: Pool, *, created: bool) -> PoolResult:
    """Save `work`, then answer the pool as saved (saving serves its queue,
    which may change it)."""
    position = work.save()
    return PoolResult(copy.deepcopy(pool), position, created=created)
