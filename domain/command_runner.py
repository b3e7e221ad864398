"""The application every Ledger command runs in, its retry loop and its
group commit.

Each command runs its body as a unit of work (unit_of_work.py), one attempt
at a time. Another writer that saved one of its aggregates first makes the
save fail on that aggregate's version (`IntegrityError`): the attempt is then
discarded (its cached aggregates forgotten, since they may hold unsaved
changes) and run again from fresh reads, with jittered backoff, up to
`max_attempts` times; then the command fails with `ConcurrentUpdateError`,
having written nothing. An attempt whose refusal rested on a cached read
(`StaleReadError`) is run again on fresh reads the same way. See
docs/architecture.md, "How a command becomes events".

Time: the ledger records the injected clock through a `RecordedClock`, which
never runs back; an attempt whose moment is earlier than what it read is run
again (`RecordedTimeBehindError`). See docs/operations.md, "Time".

Group commit (group_commit.py): a command's save adds its events to the
open batch; the batch is recorded in one transaction by whoever lets go of
the ledger's lock with nobody waiting for it, and every command in it is
answered once it is durable. A batch that lost a race wrote nothing: each of
its commands is run again on fresh reads.

Outside any command, `pool`, `allocation` and `pool_names` read the store
fresh (for audits and tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

from eventsourcing.application import (
    AggregateNotFoundError,
)
from eventsourcing.domain import Aggregate, Snapshot
from eventsourcing.persistence import IntegrityError

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import random_allocation_id
from allocation_ledger.domain.batched_recording import BatchedRecording
from allocation_ledger.domain.clock import Clock, ClockBehind, RecordedClock
from allocation_ledger.domain.errors import (
    ConcurrentUpdateError,
    LedgerError,
    PoolNotFoundError,
)
from allocation_ledger.domain.group_commit import resolve_position
from allocation_ledger.domain.in_hand import InHand
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.provisioner import Provisioner
from allocation_ledger.domain.registry import REGISTRY_ID, PoolRegistry
from allocation_ledger.domain.unit_of_work import (
    RecordedTimeBehindError,
    StaleReadError,
    UnitOfWork,
    cached_pool_uuid,
)

T = TypeVar("T")

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


class UnitOfWorkApplication(BatchedRecording):
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
    `observer` is told of retries, provisioning and batches (observer.py);
    set it to watch the ledger. `group_commit`: concurrent commands' saves
    recorded together (group_commit.py); off, each save is its own
    transaction, as the benchmark's baseline.
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
        group_commit: bool = True,
    ) -> None:
        super().__init__(env, lock_timeout=lock_timeout, group_commit=group_commit)
        self.clock = RecordedClock(clock, on_clock_behind)
        latest = self.latest_recorded_time()
        if latest is not None:
            self.clock.observe(latest)
        self.provisioner = provisioner
        self.in_hand = InHand()
        self.new_allocation_id = new_allocation_id
        self.max_attempts = max_attempts
        self.pause = pause
        self.jitter = jitter
        self.conflicts = 0
        self.replayer = Replayer()
        # With fast-forwarding, every cached read is brought up to date first.
        self.cache_is_current = bool(
            self.repository.cache is not None and self.repository.fastforward
        )

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

    def _run(self, command: str, body: Callable[[UnitOfWork], T]) -> T:
        """Run `body` as a unit of work until it commits, and answer its answer.

        On a lost race (IntegrityError, also of the batch it was recorded
        in) or a stale read the attempt is discarded and run again on fresh
        reads, as is one that refused (raised a LedgerError) on a cached
        read that may be behind, or on what a batch that then failed held;
        any other exception discards it and is raised. The answer is given
        once what the attempt saved, and what it read of the open batch, is
        durable. Side effects (`_after_commit`) follow, outside the lock.
        Raises ConcurrentUpdateError, naming `command`, after
        `max_attempts` attempts; LedgerBusyError when the ledger stayed held
        by other commands for `lock_timeout`; what recording its batch
        raised (the store failed).
        """
        fresh = False
        for attempt in range(1, self.max_attempts + 1):
            with self._held(command), self.clock.unit():
                work = UnitOfWork(self, fresh)
                decided = False
                try:
                    result = body(work)
                except StaleReadError as stale:
                    self._abandon(work)
                    fresh = True
                    self.observer.retried(
                        command,
                        "time_behind"
                        if isinstance(stale, RecordedTimeBehindError)
                        else "stale_read",
                    )
                    continue
                except IntegrityError:
                    self._abandon(work)
                    self.conflicts += 1
                    fresh = True
                    self.observer.retried(command, "conflict")
                except LedgerError:
                    # A refusal is a decision not to write: never taken on
                    # what may not last (a cached read behind another
                    # process's writes, or a batch that fails to record).
                    durable = self._record_batch() and work.batches_recorded
                    self._abandon(work)
                    if work.is_current and durable:
                        raise
                    fresh = True
                    self.observer.retried(command, "stale_read")
                    continue
                except BaseException:
                    self._abandon(work)
                    raise
                else:
                    decided = True
            if decided:
                # Answered once what it saved, and what it read of a batch,
                # is durable (it joined each batch it read from or saved to).
                failed = self._await_batches(work.members)
                self._settle_notes(work.members)
                if failed is None:
                    position = max(
                        (p for m in work.members if (p := m.position()) is not None),
                        default=None,
                    )
                    self._after_commit(work)
                    return cast(T, resolve_position(result, position))
                error = failed.batch.error
                assert error is not None
                if failed.wrote and not isinstance(error, IntegrityError):
                    raise error  # the store failed: nothing of the batch is durable
                # Lost a race, or decided on what did not last: decide again.
                # (What the batch held is no longer cached; see _record_batch.)
                self.conflicts += isinstance(error, IntegrityError)
                fresh = True
                self.observer.retried(command, "conflict")
            self.pause(min(0.002 * 2**attempt, 0.25) * (0.5 + self.jitter()))
        raise ConcurrentUpdateError(command, self.max_attempts)

    def _abandon(self, work: UnitOfWork) -> None:
        """Discard an attempt that raised (with the lock held): forgetting
        what it touched records the batches it took part in, whose
        outcomes its saves' notes are then told."""
        work.discard()
        self._settle_notes(work.members)

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
        with self._held():
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
        with self._held():
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
        with self._held():
            work = UnitOfWork(self, fresh=True)
            return work.allocation(allocation_id).snapshot()
