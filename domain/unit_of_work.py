"""One attempt at a Ledger command: what it read, what it changed, one save.

A command loads the aggregates it needs, lets them decide, and saves the new
events of every aggregate it touched in one transaction (design contract,
"Aggregates"). Another writer that saved one of them first makes the save
fail on that aggregate's version (`IntegrityError`); the retry loop
(command_runner.py) then discards the attempt and runs it again from fresh
reads. A decision not to write (a refusal) is never taken on a cached read:
the attempt is run again on fresh reads first
(`UnitOfWork.require_current`), so a stale cache can cost a retry but never a
wrong refusal. See docs/architecture.md, "How a command becomes events".

Time: each attempt is one moment (the first `now()` in it), which is never
earlier than the last event of any aggregate the attempt read: if another
process recorded a later time on one of them after the moment was taken, the
attempt is run again (`RecordedTimeBehindError`), by then at a moment no
earlier. See docs/operations.md, "Time".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate

from allocation_ledger.domain.actors import LOCAL_ACTOR
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid, is_allocation_id
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    InvalidRequestError,
    PoolNotFoundError,
)
from allocation_ledger.domain.group_commit import BatchMember, CommitBatch
from allocation_ledger.domain.pool import DEFAULT_POOL, Pool, pool_uuid
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.ports import (
    MAX_OTHER_POOLS,
    MCP_PORTS_FIELD,
    PORTS_PER_BLOCK,
    PortRanges,
    Span,
    free_block,
    ranges_conflict,
    validate_ranges,
    validate_worker_room,
)
from allocation_ledger.domain.registry import REGISTRY_ID, PoolRegistry
from allocation_ledger.domain.results import StoppedServer
from allocation_ledger.domain.values import AllocationState

if TYPE_CHECKING:
    from allocation_ledger.domain.command_runner import UnitOfWorkApplication

# Aggregate ids are uuid5 hashes of names; a command looks each up a few times.
cached_allocation_uuid = functools.lru_cache(maxsize=16_384)(allocation_uuid)
cached_pool_uuid = functools.lru_cache(maxsize=1_024)(pool_uuid)


class TeardownError(Exception):
    """An instant provisioner's deprovision failed inside a unit of work."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class StaleReadError(Exception):
    """A decision rested on a cached read; run the unit of work again, fresh."""


class RecordedTimeBehindError(StaleReadError):
    """The attempt's moment is earlier than an event of an aggregate it read
    (recorded meanwhile by another process); run it again, at a later one."""


@dataclass
class UnitOfWork:
    """One attempt at a command: what it read, what it changed, one save.

    A cached aggregate may be behind another process's writes. Deciding to
    write on it is safe (the save loses on the version and the attempt is run
    again), but deciding *not* to write is not: no conflict would ever show
    the mistake. So an attempt that ends without writing, or refuses a
    request, is run again on fresh reads before its answer is given.
    """

    ledger: UnitOfWorkApplication
    fresh: bool
    touched: dict[UUID, Aggregate] = field(default_factory=dict)
    read_cached: bool = False
    read_until: datetime | None = None
    """The time of the latest event among the aggregates read here."""
    # What to do outside, once the transaction is committed:
    teardown: list[Allocation] = field(default_factory=list)
    stopped: list[StoppedServer] = field(default_factory=list)
    to_provision: list[Allocation] = field(default_factory=list)
    members: list[BatchMember] = field(default_factory=list)
    """This attempt's part in each batch it saved to or read from
    (group_commit.py): it is answered once they are all recorded."""

    @property
    def is_current(self) -> bool:
        """Every aggregate read here is as recent as the store's."""
        return self.fresh or not self.read_cached or self.ledger.cache_is_current

    def member_of(self, batch: CommitBatch) -> BatchMember:
        """This attempt's member of `batch` (joined now if it is not yet)."""
        for member in self.members:
            if member.batch is batch:
                return member
        member = batch.join()
        self.members.append(member)
        return member

    @property
    def batches_recorded(self) -> bool:
        """No batch this attempt saved to or read from failed to record."""
        return all(m.batch.error is None for m in self.members)

    def _require_batches_recorded(self) -> None:
        """Raise StaleReadError if a batch this attempt saved to or read
        from failed to record (recorded meanwhile, by a fresh read): what it
        decided on did not last, and what it holds must not be saved."""
        if not self.batches_recorded:
            raise StaleReadError

    def require_current(self) -> None:
        """Run the attempt again on fresh reads unless this one already was.

        Raises StaleReadError, which the retry loop catches.
        """
        if not self.is_current:
            raise StaleReadError

    def get(self, aggregate_id: UUID, *, fresh: bool = False) -> Aggregate | None:
        """The aggregate, as this attempt has it (None if there is none).

        Read once per attempt: from the cache, or from the store when this
        attempt (or the caller, `fresh`) asks for fresh reads.
        """
        if aggregate_id in self.touched:
            return self.touched[aggregate_id]
        if fresh or self.fresh:
            self.ledger.forget(aggregate_id)
            self._require_batches_recorded()
        else:
            self.read_cached = True
            batched = self.ledger.batched(aggregate_id)
            if batched is not None:
                # Unrecorded events of other commands: decide on them, and
                # be answered only once they are durable.
                batch, held = batched
                self.member_of(batch)
                self.touched[aggregate_id] = held
                self._read_at(held.modified_on)
                return held
        replayer = self.ledger.replayer
        replayer.replayed = 0
        try:
            aggregate: Aggregate = self.ledger.repository.get(
                aggregate_id, projector_func=replayer
            )
        except AggregateNotFoundError:
            return None
        if isinstance(aggregate, Pool) and replayer.replayed:
            # Just read, not yet changed: the stored state, safe to snapshot.
            self.ledger.snapshot_if_long(aggregate, replayer.replayed)
        self.touched[aggregate_id] = aggregate
        self._read_at(aggregate.modified_on)
        return aggregate

    def _read_at(self, moment: datetime) -> None:
        """An aggregate read here was last changed at `moment`."""
        self.ledger.clock.observe(moment)
        if self.read_until is None or moment > self.read_until:
            self.read_until = moment

    def allocation(self, allocation_id: str, *, fresh: bool = False) -> Allocation:
        """The allocation; raises AllocationNotFoundError if there is none."""
        found = self.find_allocation(allocation_id, fresh=fresh)
        if found is None:
            raise AllocationNotFoundError(allocation_id)
        return found

    def find_allocation(
        self, allocation_id: str, *, fresh: bool = False
    ) -> Allocation | None:
        """The allocation, or None (also for what is not an allocation id)."""
        if not is_allocation_id(allocation_id):
            return None
        found = self.get(cached_allocation_uuid(allocation_id), fresh=fresh)
        assert found is None or isinstance(found, Allocation)
        return found

    def pool(self, name: str, *, actor: str = LOCAL_ACTOR) -> Pool:
        """The named pool; the default one is created on first use.

        Raises PoolNotFoundError (after a fresh read) for any other.
        """
        found = self.get(cached_pool_uuid(name))
        if found is None:
            if name != DEFAULT_POOL:
                self.require_current()
                raise PoolNotFoundError(name)
            return self.create_pool(name, PoolSettings(), actor=actor)
        assert isinstance(found, Pool)
        return found

    def pool_of(self, allocation: Allocation) -> Pool:
        """The pool of a queued or live allocation, which must hold its
        place in the queue or its reservation.

        A pool read from the cache that does not is behind another
        process's writes (the cache of a store it is not brought up to date
        from: SQLite). Taking the allocation out of it would change nothing
        in the pool, so no version conflict would show the mistake: the
        allocation alone would be saved and the pool's capacity leaked.
        Raises StaleReadError unless this attempt's reads are current.
        """
        pool = self.pool(allocation.pool)
        holds = (
            pool.queue
            if allocation.state is AllocationState.QUEUED
            else pool.reservations
        )
        if allocation.allocation_id not in holds:
            self.require_current()
        return pool

    def create_pool(
        self,
        name: str,
        settings: PoolSettings,
        *,
        actor: str,
        workers: Span | None = None,
        mcp: Span | None = None,
    ) -> Pool:
        """A new pool, registered (under the registry's version, so that two
        pools never get overlapping port ranges) with ranges of its own.

        `workers` and `mcp`: its worker and MCP server ranges, (first, last);
        one left out is that of the pool's block by the original rule (see
        domain/ports.py). Raises InvalidRequestError (field `worker_ports`,
        `mcp_ports` or `workers`) for ranges that are malformed, touch another
        pool's ports or are too small for the pool's workers, or past
        MAX_OTHER_POOLS pools besides the default one.
        """
        now = self.ledger.clock.now()
        registry = self.registry(actor=actor)
        others = [p for p in registry.pools if p not in (DEFAULT_POOL, name)]
        if name != DEFAULT_POOL and len(others) >= MAX_OTHER_POOLS:
            msg = f"at most {MAX_OTHER_POOLS} pools besides the default one"
            raise InvalidRequestError(msg, field="pool")
        neighbours, held = self.port_neighbours(registry, name)
        if name == DEFAULT_POOL:
            block = PortRanges()
        elif workers is None and mcp is None:
            found = free_block(len(others), neighbours, held)
            if found is None:
                msg = (
                    f"no block of {PORTS_PER_BLOCK} ports is free for pool {name!r}: "
                    "give it worker_ports and mcp_ports"
                )
                raise InvalidRequestError(msg, field=MCP_PORTS_FIELD)
            block = found
        else:
            block = free_block(
                len(others), neighbours, held
            ) or PortRanges.for_other_pool(min(len(others), MAX_OTHER_POOLS - 1))
        ports = block.with_spans(workers=workers, mcp=mcp)
        self.check_ports(ports, neighbours, held, workers=settings.capacity.workers)
        registry.register(name, at=now, actor=actor, ports=ports)
        pool = Pool.create(name, settings, at=now, actor=actor, ports=ports)
        self.add(pool)
        return pool

    def registry(self, *, actor: str) -> PoolRegistry:
        """The pool registry (opened here, in this unit of work, if new)."""
        registry = self.get(REGISTRY_ID)
        if registry is None:
            now = self.ledger.clock.now()
            registry = self.add(PoolRegistry.open(at=now, actor=actor))
        assert isinstance(registry, PoolRegistry)
        return registry

    def port_neighbours(
        self, registry: PoolRegistry, name: str
    ) -> tuple[dict[str, PortRanges], dict[str, set[int]]]:
        """What pool `name`'s ranges must keep clear of: every other pool's
        ranges (the default pool's original ones even before it exists), and
        the ports that pools whose ranges were changed still hold (read
        fresh, without touching them here)."""
        neighbours = registry.ranges_of_others(name)
        if name != DEFAULT_POOL and DEFAULT_POOL not in registry.pools:
            neighbours[DEFAULT_POOL] = PortRanges()
        held: dict[str, set[int]] = {}
        for other in registry.moved:
            if other == name:
                continue
            self.ledger.forget(cached_pool_uuid(other))
            self._require_batches_recorded()
            try:
                found: Aggregate = self.ledger.repository.get(cached_pool_uuid(other))
            except AggregateNotFoundError:
                continue
            assert isinstance(found, Pool)
            self._read_at(found.modified_on)
            held[other] = found.held_ports()
        return neighbours, held

    def check_ports(
        self,
        ports: PortRanges,
        neighbours: dict[str, PortRanges],
        held: dict[str, set[int]],
        *,
        workers: int,
    ) -> None:
        """Ranges a pool may have: well formed, clear of every other pool's
        ports, with room for `workers`. Raises InvalidRequestError naming the
        range (`worker_ports`, `mcp_ports`) or `workers` (after making sure,
        with `require_current`, that the refusal rests on fresh reads)."""
        validate_ranges(ports)
        conflict = ranges_conflict(ports, neighbours, held)
        if conflict is not None:
            self.require_current()
            raise InvalidRequestError(conflict.describe(ports), field=conflict.field)
        try:
            validate_worker_room(ports, workers)
        except InvalidRequestError:
            self.require_current()
            raise

    def add(self, aggregate: Aggregate) -> Aggregate:
        """Save this new aggregate with the others."""
        self.touched[aggregate.id] = aggregate
        return aggregate

    def save(self) -> int | None:
        """Write every new event of this unit of work in one transaction.

        Each pool with a queue first serves it: whatever this unit of work
        freed goes to waiting requests in the same transaction. With nothing
        to write, first make sure that was decided on fresh reads. Answers
        the notification position of the last event written (None: none;
        group_commit.PENDING_POSITION while it waits in a batch: the retry
        loop answers the position). Raises StaleReadError when a batch this
        attempt read from failed to record meanwhile.
        """
        for aggregate in list(self.touched.values()):
            if isinstance(aggregate, Pool) and aggregate.queue:
                self.ledger.serve_queue(self, aggregate)
        if not any(a.pending_events for a in self.touched.values()):
            self.require_current()
            return None
        self._require_time_not_behind()
        self._require_batches_recorded()
        return self.ledger.record_saves(self, tuple(self.touched.values()))

    def _require_time_not_behind(self) -> None:
        """No new event is earlier than an event of an aggregate read here.

        Raises RecordedTimeBehindError (the retry loop runs the attempt again,
        by then at a moment no earlier than what this one read).
        """
        if self.read_until is None:
            return
        for aggregate in self.touched.values():
            for event in aggregate.pending_events:
                if event.timestamp < self.read_until:
                    raise RecordedTimeBehindError

    def discard(self) -> None:
        """Forget every aggregate read here: they may hold unsaved changes."""
        for aggregate_id in self.touched:
            self.ledger.forget(aggregate_id)
        self.touched.clear()
        self.teardown.clear()
        self.stopped.clear()
        self.to_provision.clear()
