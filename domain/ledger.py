"""The Ledger application: the commands that change allocations and pools.

Every command runs as a unit of work: load the aggregates it needs, let them
decide, save all their new events in one transaction. A concurrent writer that
got there first makes the save fail on an aggregate's version; the unit of work
is then discarded and run again from a fresh read.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
)
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import IntegrityError, JSONTranscoder, Recording

from allocation_ledger.domain.admission import Admission, Grant, Queue, Refuse, admit
from allocation_ledger.domain.allocation import Allocation, ReleaseResult, RequestFacts
from allocation_ledger.domain.allocation_ids import (
    allocation_id_for_request,
    allocation_uuid,
    is_allocation_id,
    random_allocation_id,
)
from allocation_ledger.domain.capacity import shortfall
from allocation_ledger.domain.clock import Clock
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    AllocationNotLiveError,
    ConcurrentUpdateError,
    IdempotencyConflictError,
    InvalidRequestError,
    LeaseNotDueError,
    PoolExistsError,
    PoolNotFoundError,
    ProvisioningError,
)
from allocation_ledger.domain.pool import DEFAULT_POOL, Pool, pool_uuid
from allocation_ledger.domain.pool_settings import (
    PoolSettings,
    validate_capacity,
    validate_settings,
)
from allocation_ledger.domain.pool_state import Reservation
from allocation_ledger.domain.ports import (
    MAX_OTHER_POOLS,
    PortRanges,
)
from allocation_ledger.domain.provisioner import Endpoints, Provisioner
from allocation_ledger.domain.queueing import blocked_by, timed_out
from allocation_ledger.domain.registry import REGISTRY_ID, PoolRegistry
from allocation_ledger.domain.scheduling import (
    Scheduling,
    validate_scheduling,
    validate_wait,
)
from allocation_ledger.domain.transcodings import TRANSCODINGS
from allocation_ledger.domain.values import (
    QUEUE_TIMEOUT,
    AllocationRequest,
    AllocationState,
    Dimension,
    Rejection,
    Resources,
    validate_pool_name,
    validate_request_id,
    validate_tenant,
    validate_ttl,
)

LOCAL_ACTOR = "local"
SWEEPER_ACTOR = "system:sweeper"
SCHEDULER_ACTOR = "system:scheduler"
SWEEP_BATCH = 500
SNAPSHOT_AFTER_EVENTS = 50

T = TypeVar("T")


@dataclass(frozen=True)
class RequestResult:
    """What a request came to. `allocation` is a copy, safe to read at leisure."""

    allocation: Allocation
    position: int | None
    replayed: bool = False
    dry_run: bool = False
    expired_first: tuple[str, ...] = ()
    preempted: tuple[str, ...] = ()
    """Allocations whose capacity this request took (would take, on a dry run)."""


@dataclass(frozen=True)
class ReleaseOutcome:
    result: ReleaseResult
    allocation: Allocation
    position: int | None


@dataclass(frozen=True)
class RenewOutcome:
    allocation: Allocation
    position: int | None


@dataclass(frozen=True)
class SweepResult:
    """Allocations expired by a sweep, in the order they expired."""

    expired: tuple[str, ...]
    position: int | None
    deprovision_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class StoppedServer:
    pool: str
    name: str
    port: int


@dataclass(frozen=True)
class IdleStopResult:
    stopped: tuple[StoppedServer, ...]
    position: int | None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolResult:
    pool: Pool
    position: int | None
    created: bool


class _TeardownError(Exception):
    """An instant provisioner's deprovision failed inside a unit of work."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class _StaleReadError(Exception):
    """A decision rested on a cached read; run the unit of work again, fresh."""


@dataclass
class _UnitOfWork:
    """One attempt at a command: what it read, what it changed, one save.

    A cached aggregate may be behind another process's writes. Deciding to
    write on it is safe (the save loses on the version and the attempt is run
    again), but deciding *not* to write is not: no conflict would ever show
    the mistake. So an attempt that ends without writing, or refuses a
    request, is run again on fresh reads before its answer is given.
    """

    ledger: Ledger
    fresh: bool
    touched: dict[UUID, Aggregate] = field(default_factory=dict)
    read_cached: bool = False
    # What to do outside, once the transaction is committed:
    teardown: list[Allocation] = field(default_factory=list)
    stopped: list[StoppedServer] = field(default_factory=list)
    to_provision: list[Allocation] = field(default_factory=list)

    @property
    def is_current(self) -> bool:
        """Every aggregate read here is as recent as the store's."""
        return self.fresh or not self.read_cached or self.ledger.cache_is_current

    def require_current(self) -> None:
        """Run the attempt again on fresh reads unless this one already was."""
        if not self.is_current:
            raise _StaleReadError

    def get(self, aggregate_id: UUID, *, fresh: bool = False) -> Aggregate | None:
        if aggregate_id in self.touched:
            return self.touched[aggregate_id]
        if fresh or self.fresh:
            self.ledger.forget(aggregate_id)
        else:
            self.read_cached = True
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
        return aggregate

    def allocation(self, allocation_id: str, *, fresh: bool = False) -> Allocation:
        found = self.find_allocation(allocation_id, fresh=fresh)
        if found is None:
            raise AllocationNotFoundError(allocation_id)
        return found

    def find_allocation(
        self, allocation_id: str, *, fresh: bool = False
    ) -> Allocation | None:
        if not is_allocation_id(allocation_id):
            return None
        found = self.get(_allocation_uuid(allocation_id), fresh=fresh)
        assert found is None or isinstance(found, Allocation)
        return found

    def pool(self, name: str, *, actor: str = LOCAL_ACTOR) -> Pool:
        """The named pool; the default one is created on first use."""
        found = self.get(_pool_uuid(name))
        if found is None:
            if name != DEFAULT_POOL:
                self.require_current()
                raise PoolNotFoundError(name)
            return self.create_pool(name, PoolSettings(), actor=actor)
        assert isinstance(found, Pool)
        return found

    def create_pool(self, name: str, settings: PoolSettings, *, actor: str) -> Pool:
        now = self.ledger.clock.now()
        registry = self.get(REGISTRY_ID)
        if registry is None:
            registry = self.add(PoolRegistry.open(at=now, actor=actor))
        assert isinstance(registry, PoolRegistry)
        registry.register(name, at=now, actor=actor)
        others = [p for p in registry.pools if p != DEFAULT_POOL]
        if name == DEFAULT_POOL:
            ports = PortRanges()
        elif others.index(name) < MAX_OTHER_POOLS:
            ports = PortRanges.for_other_pool(others.index(name))
        else:
            msg = f"at most {MAX_OTHER_POOLS} pools besides the default one"
            raise InvalidRequestError(msg, field="pool")
        pool = Pool.create(name, settings, at=now, actor=actor, ports=ports)
        self.add(pool)
        return pool

    def add(self, aggregate: Aggregate) -> Aggregate:
        self.touched[aggregate.id] = aggregate
        return aggregate

    def save(self) -> int | None:
        """Write every new event of this unit of work in one transaction.

        Each pool with a queue first serves it: whatever this unit of work
        freed goes to waiting requests in the same transaction. With nothing
        to write, first make sure that was decided on fresh reads.
        """
        for aggregate in list(self.touched.values()):
            if isinstance(aggregate, Pool) and aggregate.queue:
                self.ledger.serve_queue(self, aggregate)
        if not any(a.pending_events for a in self.touched.values()):
            self.require_current()
            return None
        recordings = self.ledger.save(*self.touched.values())
        if not recordings:
            return None
        return max(r.notification.id for r in recordings)

    def discard(self) -> None:
        """Forget every aggregate read here: they may hold unsaved changes."""
        for aggregate_id in self.touched:
            self.ledger.forget(aggregate_id)
        self.touched.clear()
        self.teardown.clear()
        self.stopped.clear()
        self.to_provision.clear()


class _Replayer:
    """Applies events to an aggregate, counting those replayed (not snapshots).

    What the library's project_aggregate does, without its runtime-protocol
    assertion on every event (slow on Python 3.11).
    """

    def __init__(self) -> None:
        self.replayed = 0

    def __call__(self, aggregate: Any, events: Iterable[Any]) -> Any:
        replayed = 0
        for event in events:
            aggregate = event.mutate(aggregate)
            if not isinstance(event, Snapshot):
                replayed += 1
        self.replayed = replayed
        return aggregate


# Aggregate ids are uuid5 hashes of names; a command looks each up a few times.
_allocation_uuid = functools.lru_cache(maxsize=16_384)(allocation_uuid)
_pool_uuid = functools.lru_cache(maxsize=1_024)(pool_uuid)


def _no_pause(_: float) -> None:
    return None


class Ledger(Application[UUID]):
    """Commands on allocations and pools. Queries belong to the read models."""

    name = "AllocationLedger"
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }
    # A pool read from the store (at start, after a lost race) loads its latest
    # snapshot and the events after it. Snapshots are taken when a read had to
    # replay more events than the pool's state holds (see snapshot_if_long),
    # not every N events: a pool with many live reservations has a big
    # snapshot, and taking it every 50 events cost more than the events.
    is_snapshotting_enabled = True

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        clock: Clock,
        provisioner: Provisioner,
        new_allocation_id: Callable[[], str] = random_allocation_id,
        max_attempts: int = 8,
        pause: Callable[[float], None] = _no_pause,
        jitter: Callable[[], float] = lambda: 0.5,
    ) -> None:
        super().__init__(env)
        self.clock = clock
        self.provisioner = provisioner
        self.new_allocation_id = new_allocation_id
        self.max_attempts = max_attempts
        self.pause = pause
        self.jitter = jitter
        self.conflicts = 0
        self.replayer = _Replayer()
        self._lock = threading.RLock()
        # With fast-forwarding, every cached read is brought up to date first.
        self.cache_is_current = bool(
            self.repository.cache is not None and self.repository.fastforward
        )

    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[UUID]]:
        """Application.save, minus two runtime-protocol checks per aggregate.

        The library asks of every object whether it is a domain event and
        whether it can collect events (runtime-checkable Protocols, slow on
        Python 3.11: a quarter of a request + release in memory). The ledger
        saves only its own aggregates: collect their events directly, then
        record, snapshot and notify exactly as Application.save does
        (eventsourcing 9.5).
        """
        if kwargs or not all(isinstance(obj, Aggregate) for obj in objs):
            return super().save(*objs, **kwargs)
        processing: ProcessingEvent[UUID] = ProcessingEvent()
        for aggregate in objs:
            processing.events.extend(aggregate.collect_events())
            processing.aggregates[aggregate.id] = aggregate
        recordings = self._record(processing)
        cache = self.repository.cache
        if cache is not None and self.repository.fastforward:
            # The library caches saved aggregates only without fast-forward;
            # with it, a new allocation would be read back from the store at
            # once (a release starts by reading it). What was just saved is
            # the stored state: cache it, to be fast-forwarded from there.
            for aggregate_id, aggregate in processing.aggregates.items():
                cache.put(aggregate_id, aggregate)
        self._take_snapshots(processing)
        self._notify(recordings)
        self.notify(processing.events)  # deprecated in the library; kept
        return recordings

    def snapshot_if_long(self, pool: Pool, replayed: int) -> None:
        """Snapshot a pool just read from the store if that replayed many events.

        Taken at once, while the pool is exactly as stored (taking it after
        the command instead, only when that command commits, let snapshots
        lag behind under contention: retries then replayed longer, lost more,
        and four writers managed half the throughput of one).

        "Many" is more than the pool's state holds (its live reservations and
        servers, at least SNAPSHOT_AFTER_EVENTS): the snapshot then costs
        about what it saves the next read. Another process may take the same
        one first; that is fine.
        """
        if self.snapshots is None or pool.pending_events:
            return
        if replayed <= max(
            SNAPSHOT_AFTER_EVENTS, len(pool.reservations) + len(pool.servers)
        ):
            return
        with contextlib.suppress(IntegrityError):
            self.snapshots.put([Snapshot.take(pool)])

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        for transcoding in TRANSCODINGS:
            transcoder.register(transcoding)

    # -- the unit of work ------------------------------------------------------

    def forget(self, aggregate_id: UUID) -> None:
        """Drop an aggregate from the cache so the next read comes from the store."""
        cache = self.repository.cache
        if cache is not None:
            with contextlib.suppress(KeyError):
                cache.get(aggregate_id, evict=True)

    def _run(self, command: str, body: Callable[[_UnitOfWork], T]) -> T:
        fresh = False
        for attempt in range(1, self.max_attempts + 1):
            with self._lock:
                work = _UnitOfWork(self, fresh)
                committed = False
                try:
                    result = body(work)
                except _StaleReadError:
                    work.discard()
                    fresh = True
                    continue
                except IntegrityError:
                    work.discard()
                    self.conflicts += 1
                    fresh = True
                except BaseException:
                    work.discard()
                    raise
                else:
                    committed = True
            if committed:
                self._after_commit(work)
                return result
            self.pause(min(0.002 * 2**attempt, 0.25) * (0.5 + self.jitter()))
        raise ConcurrentUpdateError(command, self.max_attempts)

    def _after_commit(self, work: _UnitOfWork) -> None:
        """Side effects of a committed unit of work, outside the lock."""
        self._deprovision_quietly(work.teardown)
        self._stop_servers_quietly(work.stopped)
        for granted in work.to_provision:
            self._provision(RequestResult(granted, None), actor=SCHEDULER_ACTOR)

    def serve_queue(self, work: _UnitOfWork, pool: Pool) -> None:
        """Time out requests that waited too long, then grant, in order, what
        now fits. Runs inside the unit of work that freed the room."""
        now = self.clock.now()
        for late in timed_out(pool, now):
            waited_for = blocked_by(pool, late)
            reason = Rejection(
                QUEUE_TIMEOUT,
                waited_for.dimension if waited_for else Dimension.WORKERS,
                waited_for.requested if waited_for else 0,
                waited_for.available if waited_for else 0,
            )
            work.allocation(late.allocation_id).time_out(
                reason, at=now, actor=SCHEDULER_ACTOR
            )
            pool.dequeue(late.allocation_id, "timed_out", at=now, actor=SCHEDULER_ACTOR)
        while (entry := pool.next_to_grant(now)) is not None:
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
                ports.worker_ports, ports.servers, at=now, actor=SCHEDULER_ACTOR
            )
            if self.provisions_instantly:
                self._provision_now(allocation, pool, at=now, actor=SCHEDULER_ACTOR)
            else:
                work.to_provision.append(allocation.snapshot())

    # -- pools -----------------------------------------------------------------

    def create_pool(
        self,
        name: str,
        settings: PoolSettings | None = None,
        *,
        actor: str = LOCAL_ACTOR,
    ) -> PoolResult:
        validate_pool_name(name)
        chosen = settings or PoolSettings()
        validate_settings(chosen)

        def body(work: _UnitOfWork) -> PoolResult:
            if work.get(_pool_uuid(name), fresh=True) is not None:
                raise PoolExistsError(name)
            pool = work.create_pool(name, chosen, actor=actor)
            return PoolResult(copy.deepcopy(pool), work.save(), created=True)

        return self._run("create_pool", body)

    def configure_pool(
        self,
        name: str,
        *,
        capacity: Resources | None = None,
        worker_size: Resources | None = None,
        server_costs: dict[str, Resources] | None = None,
        idle_timeout_seconds: int | None = None,
        actor: str = LOCAL_ACTOR,
    ) -> PoolResult:
        """Create the pool with these settings, or change the ones given."""
        validate_pool_name(name)

        def body(work: _UnitOfWork) -> PoolResult:
            found = work.get(_pool_uuid(name))
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
            )
            validate_settings(settings)
            now = self.clock.now()
            if not isinstance(found, Pool):
                pool = work.create_pool(name, settings, actor=actor)
                return PoolResult(copy.deepcopy(pool), work.save(), created=True)
            found.change_capacity(settings.capacity, at=now, actor=actor)
            found.reconfigure(settings, at=now, actor=actor)
            return PoolResult(copy.deepcopy(found), work.save(), created=False)

        return self._run("configure_pool", body)

    def set_capacity(
        self, capacity: Resources, *, pool: str = DEFAULT_POOL, actor: str = LOCAL_ACTOR
    ) -> PoolResult:
        """Set a pool's totals. Lowering never evicts: it only refuses new requests."""
        validate_pool_name(pool)
        validate_capacity(capacity)
        if pool != DEFAULT_POOL:

            def exists(work: _UnitOfWork) -> None:
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

        def body(work: _UnitOfWork) -> PoolResult:
            target = work.pool(pool, actor=actor)
            target.set_quota(tenant, limits, at=self.clock.now(), actor=actor)
            return PoolResult(copy.deepcopy(target), work.save(), created=False)

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

        def body(work: _UnitOfWork) -> PoolResult:
            target = work.pool(pool, actor=actor)
            target.configure_scheduling(scheduling, at=self.clock.now(), actor=actor)
            return PoolResult(copy.deepcopy(target), work.save(), created=False)

        return self._run("configure_scheduling", body)

    def pool_names(self) -> list[str]:
        with self._lock:
            self.forget(REGISTRY_ID)
            try:
                registry: Aggregate = self.repository.get(REGISTRY_ID)
            except AggregateNotFoundError:
                return []
            assert isinstance(registry, PoolRegistry)
            return list(registry.pools)

    def pool(self, name: str) -> Pool:
        """The pool aggregate as stored (a fresh read; for audits and tests)."""
        with self._lock:
            self.forget(_pool_uuid(name))
            try:
                found: Aggregate = self.repository.get(_pool_uuid(name))
            except AggregateNotFoundError:
                raise PoolNotFoundError(name) from None
            assert isinstance(found, Pool)
            return copy.deepcopy(found)

    def allocation(self, allocation_id: str) -> Allocation:
        """The allocation aggregate as stored (a fresh read; for audits and tests)."""
        with self._lock:
            work = _UnitOfWork(self, fresh=True)
            return work.allocation(allocation_id).snapshot()

    # -- allocations -----------------------------------------------------------

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
        expired in the same transaction, so a late sweep never costs capacity.
        A request that still does not fit may take the capacity of live
        allocations of strictly lower priority, where the pool's policy allows
        (and `preempt` is true). Otherwise, with `wait`, it is queued (holding
        nothing) until room frees or `max_wait_seconds` pass; without, it is
        recorded as rejected, with the reason. Under the pool's strict queue
        policy a newcomer does not pass requests already waiting ahead of it.
        A tenant over its quota in the pool is refused, waiting or not.
        """
        validate_pool_name(pool)
        if request_id is not None:
            validate_request_id(request_id)
        if max_wait_seconds is not None:
            validate_wait(max_wait_seconds)
        if tenant is not None:
            validate_tenant(tenant)

        def body(work: _UnitOfWork) -> RequestResult:
            now = self.clock.now()
            if request_id is not None:
                allocation_id = allocation_id_for_request(pool, request_id)
                existing = work.find_allocation(allocation_id, fresh=True)
                if existing is not None:
                    _check_same_request(existing, request, request_id)
                    return RequestResult(
                        existing.snapshot(), None, replayed=True, dry_run=dry_run
                    )
            else:
                allocation_id = self.new_allocation_id()
            target = work.pool(pool, actor=actor)
            needed = target.settings.resources_for(request)
            expired: list[str] = []
            if shortfall(target, request, needed) is not None and target.due(now):
                expired = self._expire_due(work, target, now, limit=None)
                work.teardown.extend(work.allocation(i).snapshot() for i in expired)
                # What expiry freed goes first to those already waiting.
                self.serve_queue(work, target)
            decision = admit(
                target,
                request,
                tenant=tenant,
                now=now,
                preempt=preempt,
                wait=wait,
                resources=needed,
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
            )
            allocation = self._carry_out(
                work,
                target,
                decision,
                allocation_id,
                facts,
                instant=not dry_run and self.provisions_instantly,
                max_wait_seconds=max_wait_seconds,
            )
            work.add(allocation)
            preempted = (
                tuple(v.allocation_id for v in decision.victims)
                if isinstance(decision, Grant)
                else ()
            )
            if dry_run:
                snapshot = allocation.snapshot()
                work.discard()
                return RequestResult(snapshot, None, dry_run=True, preempted=preempted)
            position = work.save()
            return RequestResult(
                allocation.snapshot(),
                position,
                expired_first=tuple(expired),
                preempted=preempted,
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
        )

    def _carry_out(
        self,
        work: _UnitOfWork,
        pool: Pool,
        decision: Admission,
        allocation_id: str,
        facts: RequestFacts,
        *,
        instant: bool,
        max_wait_seconds: int | None,
    ) -> Allocation:
        """Record what admission decided about a new request, in `work`.

        A grant preempts its victims first, then reserves (and, with
        `instant`, provisions at once); a queued request goes in the pool's
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
                if instant:
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
        work: _UnitOfWork,
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

    @property
    def provisions_instantly(self) -> bool:
        return bool(getattr(self.provisioner, "instant", False))

    def _provision_now(
        self, allocation: Allocation, pool: Pool, *, at: datetime, actor: str
    ) -> None:
        """Provision inside the unit of work (instant provisioners only)."""
        try:
            endpoints = self.provisioner.provision(
                allocation.allocation_id, allocation.workers, allocation.servers
            )
        except Exception as error:  # noqa: BLE001 - any provisioner failure
            allocation.fail(str(error) or type(error).__name__, at=at, actor=actor)
            pool.free(allocation.allocation_id, "failed", at=at, actor=actor)
            return
        allocation.activate(
            Endpoints(dict(endpoints.workers), dict(endpoints.servers)),
            at=at,
            actor=actor,
        )

    def resume(self, allocation_id: str, *, actor: str = SWEEPER_ACTOR) -> Allocation:
        """Finish what an interrupted command left half done.

        A `pending` allocation is provisioned (again) and activated, or failed;
        a `releasing` one is deprovisioned (again) and released. Anything else
        is left as it is. Safe to call more than once, from any process.
        """

        def look(work: _UnitOfWork) -> Allocation:
            return work.allocation(allocation_id, fresh=True).snapshot()

        current = self._run("resume", look)
        if current.state is AllocationState.PENDING:
            return self._provision(RequestResult(current, None), actor=actor).allocation
        if current.state is AllocationState.RELEASING:
            return self.release(allocation_id, actor=actor).allocation
        return current

    def _provision(self, reserved: RequestResult, *, actor: str) -> RequestResult:
        pending = reserved.allocation
        try:
            endpoints = self.provisioner.provision(
                pending.allocation_id, pending.workers, pending.servers
            )
        except Exception as error:  # noqa: BLE001 - any provisioner failure
            return self._fail_provisioning(
                reserved, str(error) or type(error).__name__, actor
            )

        def activate(work: _UnitOfWork) -> RequestResult:
            allocation = work.allocation(pending.allocation_id)
            if allocation.state is not AllocationState.PENDING:
                return RequestResult(allocation.snapshot(), reserved.position)
            allocation.activate(
                Endpoints(dict(endpoints.workers), dict(endpoints.servers)),
                at=self.clock.now(),
                actor=actor,
            )
            position = work.save()
            return RequestResult(
                allocation.snapshot(),
                position,
                expired_first=reserved.expired_first,
            )

        return self._run("activate", activate)

    def _fail_provisioning(
        self, reserved: RequestResult, error: str, actor: str
    ) -> RequestResult:
        allocation_id = reserved.allocation.allocation_id

        def fail(work: _UnitOfWork) -> RequestResult:
            allocation = work.allocation(allocation_id)
            if not allocation.state.is_live:
                return RequestResult(allocation.snapshot(), reserved.position)
            now = self.clock.now()
            allocation.fail(error, at=now, actor=actor)
            work.pool(allocation.pool).free(
                allocation_id, "failed", at=now, actor=actor
            )
            return RequestResult(allocation.snapshot(), work.save())

        return self._run("fail_provisioning", fail)

    def release(
        self, allocation_id: str, *, actor: str = LOCAL_ACTOR
    ) -> ReleaseOutcome:
        """Give an allocation's capacity back.

        Releasing one that is already released or expired changes nothing and
        says `already_released`; releasing a failed one changes nothing and
        says `failed`.
        """

        if self.provisions_instantly:
            return self._release_instantly(allocation_id, actor)

        def look(work: _UnitOfWork) -> Allocation:
            return work.allocation(allocation_id).snapshot()

        current = self._run("release_resources", look)
        if current.state is AllocationState.QUEUED:
            return self._cancel_queued(allocation_id, actor)
        if not current.state.is_live:
            return self._unchanged_release(current)
        if not self.provisions_instantly:
            # Record the intent first: a crash while tearing down then leaves
            # the allocation `releasing`, for `resume` to finish.
            self._mark_releasing(allocation_id, actor)
        try:
            self.provisioner.deprovision(
                allocation_id, current.workers, current.servers
            )
        except Exception as error:
            self._mark_releasing(allocation_id, actor)
            raise ProvisioningError(allocation_id, str(error)) from error

        def body(work: _UnitOfWork) -> ReleaseOutcome:
            allocation = work.allocation(allocation_id)
            if not allocation.state.is_live:
                return self._unchanged_release(allocation.snapshot())
            now = self.clock.now()
            allocation.request_release(at=now, actor=actor)
            result = allocation.release(at=now, actor=actor)
            work.pool(allocation.pool).free(
                allocation_id, "released", at=now, actor=actor
            )
            return ReleaseOutcome(result, allocation.snapshot(), work.save())

        return self._run("release_resources", body)

    def _release_instantly(self, allocation_id: str, actor: str) -> ReleaseOutcome:
        """`release` for an instant provisioner, in one unit of work.

        The same steps in the same order (look, cancel a queued request or
        leave a finished one as it is, deprovision, record the release), but
        read once: an instant provisioner's teardown touches nothing outside,
        so it may run inside the attempt (again, if the attempt is retried).
        """

        def body(work: _UnitOfWork) -> ReleaseOutcome:
            allocation = work.allocation(allocation_id)
            if allocation.state is AllocationState.QUEUED:
                now = self.clock.now()
                result = allocation.cancel(at=now, actor=actor)
                work.pool(allocation.pool).dequeue(
                    allocation_id, "cancelled", at=now, actor=actor
                )
                return ReleaseOutcome(result, allocation.snapshot(), work.save())
            if not allocation.state.is_live:
                return self._unchanged_release(allocation.snapshot())
            try:
                self.provisioner.deprovision(
                    allocation_id, allocation.workers, allocation.servers
                )
            except Exception as error:
                raise _TeardownError(error) from error
            now = self.clock.now()
            allocation.request_release(at=now, actor=actor)
            result = allocation.release(at=now, actor=actor)
            work.pool(allocation.pool).free(
                allocation_id, "released", at=now, actor=actor
            )
            return ReleaseOutcome(result, allocation.snapshot(), work.save())

        try:
            return self._run("release_resources", body)
        except _TeardownError as failed:
            self._mark_releasing(allocation_id, actor)
            raise ProvisioningError(allocation_id, str(failed.error)) from failed.error

    def _cancel_queued(self, allocation_id: str, actor: str) -> ReleaseOutcome:
        """Releasing a queued request takes it out of the queue; it held nothing."""

        def body(work: _UnitOfWork) -> ReleaseOutcome:
            allocation = work.allocation(allocation_id)
            if allocation.state is not AllocationState.QUEUED:
                raise _StaleReadError  # granted or timed out meanwhile: look again
            now = self.clock.now()
            result = allocation.cancel(at=now, actor=actor)
            work.pool(allocation.pool).dequeue(
                allocation_id, "cancelled", at=now, actor=actor
            )
            return ReleaseOutcome(result, allocation.snapshot(), work.save())

        outcome = self._run("release_resources", body)
        return outcome

    def _mark_releasing(self, allocation_id: str, actor: str) -> None:
        def body(work: _UnitOfWork) -> None:
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

    def renew(
        self,
        allocation_id: str,
        ttl_seconds: int | None = None,
        *,
        actor: str = LOCAL_ACTOR,
    ) -> RenewOutcome:
        """Move an active allocation's expiry to now + ttl (its own ttl by default).

        An allocation whose lease already ran out is expired, not renewed.
        """
        if ttl_seconds is not None:
            validate_ttl(ttl_seconds)

        def body(work: _UnitOfWork) -> RenewOutcome:
            allocation = work.allocation(allocation_id)
            now = self.clock.now()
            pool = work.pool(allocation.pool)
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

        def body(work: _UnitOfWork) -> RenewOutcome:
            allocation = work.allocation(allocation_id)
            now = self.clock.now()
            if not allocation.state.is_live:
                raise AllocationNotLiveError(allocation_id, allocation.state, "expire")
            if not allocation.is_due(now):
                assert allocation.expires_at is not None
                raise LeaseNotDueError(allocation_id, allocation.expires_at)
            allocation.expire(at=now, actor=actor)
            work.pool(allocation.pool).free(
                allocation_id, "expired", at=now, actor=actor
            )
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
                    work: _UnitOfWork, name: str = name
                ) -> tuple[list[Allocation], int | None]:
                    pool = work.pool(name)
                    now = self.clock.now()
                    ids = self._expire_due(
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
            tuple(a.allocation_id for a in expired), position, tuple(errors)
        )

    def _expire_due(
        self,
        work: _UnitOfWork,
        pool: Pool,
        now: datetime,
        *,
        limit: int | None,
        actor: str = SWEEPER_ACTOR,
    ) -> list[str]:
        expired: list[str] = []
        for reservation in _first(pool.due(now), limit):
            allocation = work.allocation(reservation.allocation_id)
            if allocation.state.is_live:
                allocation.expire(at=now, actor=actor)
            pool.free(reservation.allocation_id, "expired", at=now, actor=actor)
            expired.append(reservation.allocation_id)
        return expired

    def _deprovision_quietly(self, allocations: Sequence[Allocation]) -> list[str]:
        errors: list[str] = []
        for allocation in allocations:
            try:
                self.provisioner.deprovision(
                    allocation.allocation_id, allocation.workers, allocation.servers
                )
            except Exception as error:  # noqa: BLE001 - reported, not raised
                errors.append(f"{allocation.allocation_id}: {error}")
        return errors

    def stop_idle_servers(self, *, actor: str = SWEEPER_ACTOR) -> IdleStopResult:
        """Stop MCP servers idle for longer than their pool's idle timeout."""
        stopped: list[StoppedServer] = []
        position: int | None = None
        for name in self.pool_names():

            def body(
                work: _UnitOfWork, name: str = name
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

    def _stop_servers_quietly(self, servers: Sequence[StoppedServer]) -> list[str]:
        errors: list[str] = []
        for server in servers:
            try:
                self.provisioner.stop_server(server.name, server.port)
            except Exception as error:  # noqa: BLE001 - reported, not raised
                errors.append(f"{server.name}: {error}")
        return errors


def _first(items: list[T], limit: int | None) -> Iterator[T]:
    return iter(items if limit is None else items[:limit])


def _check_same_request(
    existing: Allocation, request: AllocationRequest, request_id: str
) -> None:
    before: dict[str, Any] = existing.request.as_dict()
    after = request.as_dict()
    differing = [key for key in after if before.get(key) != after[key]]
    if differing:
        raise IdempotencyConflictError(request_id, existing.allocation_id, differing)
