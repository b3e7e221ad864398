"""The unit of work every Ledger command runs as, and its retry loop.

A command loads the aggregates it needs, lets them decide, and saves the new
events of every aggregate it touched in one transaction (design contract,
"Aggregates"). Another writer that saved one of them first makes the save
fail on that aggregate's version (`IntegrityError`): the attempt is then
discarded (its cached aggregates forgotten, since they may hold unsaved
changes) and run again from fresh reads, with jittered backoff, up to
`max_attempts` times; then the command fails with `ConcurrentUpdateError`,
having written nothing. A decision not to write (a refusal) is never taken on
a cached read: the attempt is run again on fresh reads first
(`UnitOfWork.require_current`), so a stale cache can cost a retry but never a
wrong refusal. See docs/architecture.md, "How a command becomes events".

Time: the ledger records the injected clock through a `RecordedClock`, which
never runs back. Each attempt is one moment (the first `now()` in it), which
is never earlier than the last event of any aggregate the attempt read: if
another process recorded a later time on one of them after the moment was
taken, the attempt is run again (`RecordedTimeBehindError`), by then at a
moment no earlier. See docs/operations.md, "Time".
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
)
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import IntegrityError, Recording

from allocation_ledger.domain.actors import LOCAL_ACTOR
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import (
    allocation_uuid,
    is_allocation_id,
    random_allocation_id,
)
from allocation_ledger.domain.clock import Clock, ClockBehind, RecordedClock
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    ConcurrentUpdateError,
    InvalidRequestError,
    LedgerBusyError,
    PoolNotFoundError,
)
from allocation_ledger.domain.observer import LedgerObserver
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
from allocation_ledger.domain.provisioner import Provisioner
from allocation_ledger.domain.registry import REGISTRY_ID, PoolRegistry
from allocation_ledger.domain.results import StoppedServer

T = TypeVar("T")

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

    @property
    def is_current(self) -> bool:
        """Every aggregate read here is as recent as the store's."""
        return self.fresh or not self.read_cached or self.ledger.cache_is_current

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
        the notification position of the last event written (None: none).
        """
        for aggregate in list(self.touched.values()):
            if isinstance(aggregate, Pool) and aggregate.queue:
                self.ledger.serve_queue(self, aggregate)
        if not any(a.pending_events for a in self.touched.values()):
            self.require_current()
            return None
        self._require_time_not_behind()
        recordings = self.ledger.save(*self.touched.values())
        if not recordings:
            return None
        return max(r.notification.id for r in recordings)

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


READ_PAGE = 5_000
"""Events read at once when a pool is read fresh outside a command."""


class Replayer:
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


def _no_pause(_: float) -> None:
    return None


class UnitOfWorkApplication(Application[UUID]):
    """An eventsourcing Application whose commands run as units of work.

    The base of the Ledger (ledger.py) and of its command mixins: the store,
    the aggregate cache, the ledger's clock, provisioner and id source, and
    `_run`, the retry loop every command runs its body in. Subclasses provide
    `serve_queue`, `snapshot_if_long` and `_after_commit`.

    `max_attempts`: how often a command is tried before ConcurrentUpdateError;
    `pause` and `jitter`: the backoff between attempts (seconds, and a factor
    from 0 to 1), injectable so tests need not sleep. `lock_timeout`: the
    longest a command waits (seconds) for the ledger while other commands of
    this process hold it (None: as long as it takes), then LedgerBusyError.
    `clock` is recorded through a RecordedClock (`self.clock`), which starts
    from the time of the last event in the log; `on_clock_behind` is told
    when the clock reads earlier than that mark (the adapter logs it).
    `observer` is told of retries and provisioning (observer.py); set it to
    watch the ledger.
    """

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
        on_clock_behind: Callable[[ClockBehind], None] | None = None,
        lock_timeout: float | None = None,
    ) -> None:
        super().__init__(env)
        self.clock = RecordedClock(clock, on_clock_behind)
        latest = self.latest_recorded_time()
        if latest is not None:
            self.clock.observe(latest)
        self.provisioner = provisioner
        self.new_allocation_id = new_allocation_id
        self.max_attempts = max_attempts
        self.pause = pause
        self.jitter = jitter
        self.conflicts = 0
        self.observer = LedgerObserver()
        self.replayer = Replayer()
        self._lock = threading.RLock()
        self.lock_timeout = lock_timeout
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

    def latest_recorded_time(self) -> datetime | None:
        """The time of the last event in the log (None when it is empty)."""
        last = self.recorder.max_notification_id()
        if not last:
            return None
        notifications = self.recorder.select_notifications(last, 1)
        if not notifications:
            return None
        event = self.mapper.to_domain_event(notifications[0])
        moment = getattr(event, "timestamp", None)
        return moment if isinstance(moment, datetime) else None

    def forget(self, aggregate_id: UUID) -> None:
        """Drop an aggregate from the cache so the next read comes from the store."""
        cache = self.repository.cache
        if cache is not None:
            with contextlib.suppress(KeyError):
                cache.get(aggregate_id, evict=True)

    def _run(self, command: str, body: Callable[[UnitOfWork], T]) -> T:
        """Run `body` as a unit of work until it commits, and answer its answer.

        On a lost race (IntegrityError) or a stale read the attempt is
        discarded and run again on fresh reads; any other exception discards
        it and is raised. Side effects (`_after_commit`) follow a commit,
        outside the lock. Raises ConcurrentUpdateError, naming `command`,
        after `max_attempts` attempts; LedgerBusyError when the ledger stayed
        held by other commands for `lock_timeout`.
        """
        fresh = False
        for attempt in range(1, self.max_attempts + 1):
            with self._held(command), self.clock.unit():
                work = UnitOfWork(self, fresh)
                committed = False
                try:
                    result = body(work)
                except StaleReadError as stale:
                    work.discard()
                    fresh = True
                    self.observer.retried(
                        command,
                        "time_behind"
                        if isinstance(stale, RecordedTimeBehindError)
                        else "stale_read",
                    )
                    continue
                except IntegrityError:
                    work.discard()
                    self.conflicts += 1
                    fresh = True
                    self.observer.retried(command, "conflict")
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

    @contextlib.contextmanager
    def _held(self, command: str) -> Iterator[None]:
        """Hold the ledger's lock, waiting at most `lock_timeout` for it."""
        timeout = -1 if self.lock_timeout is None else self.lock_timeout
        if not self._lock.acquire(timeout=timeout):
            raise LedgerBusyError(command, timeout)
        try:
            yield
        finally:
            self._lock.release()

    def serve_queue(self, work: UnitOfWork, pool: Pool) -> list[str]:
        """Serve the pool's queue inside `work` (before it saves); answers
        the allocation ids granted."""
        raise NotImplementedError

    def snapshot_if_long(self, pool: Pool, replayed: int) -> None:
        """Maybe snapshot a pool just read, whose read replayed `replayed` events."""
        raise NotImplementedError

    def _after_commit(self, work: UnitOfWork) -> None:
        """Side effects of a committed unit of work, outside the lock."""
        raise NotImplementedError

    # -- fresh reads, outside any command ----------------------------------------

    def pool_names(self) -> list[str]:
        """The names of every pool, in the order they were created."""
        with self._lock:
            self.forget(REGISTRY_ID)
            try:
                registry: Aggregate = self.repository.get(REGISTRY_ID)
            except AggregateNotFoundError:
                return []
            assert isinstance(registry, PoolRegistry)
            return list(registry.pools)

    def pool(self, name: str) -> Pool:
        """The pool aggregate as stored (a fresh read; for audits and tests).

        Raises PoolNotFoundError.
        """
        with self._lock:
            self.forget(cached_pool_uuid(name))
            found = self._read_in_pages(cached_pool_uuid(name))
            if found is None:
                raise PoolNotFoundError(name)
            assert isinstance(found, Pool)
            return found

    def _read_in_pages(self, aggregate_id: UUID) -> Aggregate | None:
        """An aggregate from its latest snapshot and then its events, read
        READ_PAGE at a time: memory does not grow with a long history (the
        library's read holds every event since the snapshot at once)."""
        aggregate: Any = None
        after: int | None = None
        if self.snapshots is not None:
            for snapshot in self.snapshots.get(aggregate_id, desc=True, limit=1):
                aggregate = cast(Any, snapshot).mutate(None)
                after = snapshot.originator_version
        while True:
            page: list[Any] = list(
                self.events.get(aggregate_id, gt=after, limit=READ_PAGE)
            )
            for event in page:
                aggregate = event.mutate(aggregate)
            if len(page) < READ_PAGE:
                return cast(Aggregate | None, aggregate)
            after = page[-1].originator_version

    def allocation(self, allocation_id: str) -> Allocation:
        """The allocation aggregate as stored (a fresh read; for audits and tests).

        Raises AllocationNotFoundError.
        """
        with self._lock:
            work = UnitOfWork(self, fresh=True)
            return work.allocation(allocation_id).snapshot()
