"""Saving with group commit: the ledger's lock, its open batch, and the
recording of a batch in one transaction (group_commit.py says how and why).

`BatchedRecording` is the base of the application commands run in
(command_runner.py). Commands hold its lock (`_held`) while they decide;
their saves go to the open batch (`record_saves`); letting go of the lock
with nobody waiting for it records the batch (`_record_batch`); a command is
answered once its batches are settled (`_await_batches`). Reading an
aggregate goes through the open batch first (`batched`), and forgetting one
the batch holds records the batch first (`forget`), so the cache never loses
unrecorded events.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification, Recording

from allocation_ledger.domain.errors import LedgerBusyError
from allocation_ledger.domain.group_commit import (
    PENDING_POSITION,
    BatchMember,
    CommitBatch,
)
from allocation_ledger.domain.observer import LedgerObserver

if TYPE_CHECKING:
    from allocation_ledger.domain.unit_of_work import UnitOfWork

ORPHAN_CHECK_SECONDS = 0.2
"""How often a command waiting for its batch checks that somebody will
record it (see `_await_batches`)."""


class WriterLock(Protocol):
    """A lock several processes on one store take before deciding (the
    PostgreSQL adapter's writer_lock.py), so that none decides on what
    another is about to commit. Held from a command's first decision until
    its batch is recorded."""

    def acquire(self, timeout: float | None) -> bool:
        """Take it, waiting at most `timeout` seconds (None: as long as it
        takes); whether it was taken. Raises the store's errors."""

    def release(self) -> None:
        """Give it up."""


class BatchedRecording(Application[UUID]):
    """An eventsourcing Application whose saves are recorded in batches.

    `group_commit`: concurrent commands' saves recorded together; off, each
    save is its own transaction (the benchmark's baseline). `lock_timeout`:
    the longest a command waits (seconds) for the lock while other commands
    hold it (None: as long as it takes), then LedgerBusyError. `observer` is
    told of each batch recorded (observer.py). `writer_lock`, when set
    (several processes on one PostgreSQL ledger), is held from a command's
    first decision until its batch is recorded.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        *,
        lock_timeout: float | None = None,
        group_commit: bool = True,
    ) -> None:
        super().__init__(env)
        self.observer = LedgerObserver()
        self.lock_timeout = lock_timeout
        self.group_commit = group_commit
        self._lock = threading.RLock()
        self._batch: CommitBatch | None = None
        self._waiters = 0
        self._waiters_lock = threading.Lock()
        self._depth = 0
        self._holder: int | None = None
        self.writer_lock: WriterLock | None = None
        self._writer_held = False

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

    @property
    def waiting(self) -> int:
        """How many commands wait for the lock now (they will decide next,
        and the last of them records the open batch)."""
        return self._waiters

    def forget(self, aggregate_id: UUID) -> bool:
        """Drop an aggregate from the cache so the next read comes from the store.

        An aggregate with unrecorded events in the open batch is recorded
        first (the whole batch is): forgetting it would lose them. Answers
        whether that batch was recorded (True when there was nothing to
        record). Called with the ledger's lock held.
        """
        recorded = True
        if self._batch is not None and self._batch.holds(aggregate_id) is not None:
            recorded = self._record_batch()
        cache = self.repository.cache
        if cache is not None:
            with contextlib.suppress(KeyError):
                cache.get(aggregate_id, evict=True)
        return recorded

    def batched(self, aggregate_id: UUID) -> tuple[CommitBatch, Aggregate] | None:
        """The open batch and the aggregate as it leaves it, when it has
        unrecorded events there (None otherwise). Called with the ledger's
        lock held."""
        batch = self._batch
        if batch is None:
            return None
        held = batch.holds(aggregate_id)
        return None if held is None else (batch, held)

    # -- saving ---------------------------------------------------------------

    def record_saves(
        self, work: UnitOfWork, aggregates: tuple[Aggregate, ...]
    ) -> int | None:
        """Save the new events of `aggregates`, for `work`.

        With group commit, the events are encoded and added to the open
        batch (opened here if none is), and the aggregates cached as they
        now are; the answer is PENDING_POSITION, which the retry loop
        replaces with the position once the batch is recorded. Without, one
        transaction now, answering the position of the last event written.
        None: nothing to write. Raises what encoding or (without group
        commit) recording raises; either way nothing of this save is kept.
        """
        note = self._saving(aggregates)
        if not self.group_commit:
            try:
                recordings = self.save(*aggregates)
            except BaseException as error:
                self._saved(note, error)
                raise
            self._saved(note, None)
            return max((r.notification.id for r in recordings), default=None)
        changed = {a.id: a for a in aggregates if a.pending_events}
        events = [event for a in changed.values() for event in a.collect_events()]
        if not events:
            return None
        stored = [self.mapper.to_stored_event(event) for event in events]
        if self._batch is None:
            self._batch = CommitBatch()
        batch = self._batch
        member = work.member_of(batch)
        batch.add(member, events, stored, changed)
        member.notes.append(note)
        cache = self.repository.cache
        if cache is not None:
            for aggregate_id, aggregate in changed.items():
                cache.put(aggregate_id, aggregate)
        return PENDING_POSITION

    def _saving(self, aggregates: tuple[Aggregate, ...]) -> object:
        """A save of `aggregates` (with their pending events) begins; what
        is answered here is given back to `_saved`. For adapters that note
        what each command wrote (write_journal.py)."""
        return None

    def _saved(self, note: object, error: BaseException | None) -> None:
        """The save `note` stands for is durable (`error` None) or failed."""

    def _record_batch(self) -> bool:
        """Record the open batch in one transaction and tell its members.

        Called with the ledger's lock held. On failure nothing of it is
        durable: its aggregates are dropped from the cache (the next read
        comes from the store) and its members are told the error. Answers
        whether the batch (if any) was recorded.
        """
        batch, self._batch = self._batch, None
        if batch is None:
            return True
        if not batch.stored:
            batch.recorded([])
            return True
        try:
            notification_ids = self.recorder.insert_events(batch.stored)
        except BaseException as error:
            cache = self.repository.cache
            for aggregate_id in batch.aggregates:
                if cache is not None:
                    with contextlib.suppress(KeyError):
                        cache.get(aggregate_id, evict=True)
            batch.failed(error)
            self.observer.batch_recorded(
                len(batch.members), len(batch.stored), ok=False
            )
            if not isinstance(error, Exception):
                raise
            return False
        ids = list(notification_ids or [])
        batch.recorded(ids)
        self.observer.batch_recorded(len(batch.members), len(batch.stored), ok=True)
        if ids:
            recordings = [
                Recording(
                    event,
                    Notification(
                        originator_id=stored.originator_id,
                        originator_version=stored.originator_version,
                        topic=stored.topic,
                        state=stored.state,
                        id=notification_id,
                    ),
                )
                for event, stored, notification_id in zip(
                    batch.events, batch.stored, ids, strict=True
                )
            ]
            self._notify(recordings)
        self.notify(batch.events)  # deprecated in the library; kept
        return True

    def _await_batches(self, members: list[BatchMember]) -> BatchMember | None:
        """Wait until the batches of `members` are settled; answer the first
        member whose batch failed (None: all recorded).

        Whoever lets go of the lock with nobody waiting records the batch;
        should that not happen (a waiter gave up at that very moment), a
        member that finds the lock free records it itself.
        """
        for member in members:
            batch = member.batch
            if self._holder == threading.get_ident() and self._batch is batch:
                # A command run inside another's (the lock is still held
                # here): nobody else can record its batch; record it now,
                # keeping the writers' lock for the outer command.
                self._record_batch()
            while not batch.wait(ORPHAN_CHECK_SECONDS):
                if self._lock.acquire(blocking=False):
                    try:
                        if self._batch is batch:
                            self._record_batch()
                            self._give_writer_lock_up()
                    finally:
                        self._lock.release()
        return next((m for m in members if m.batch.error is not None), None)

    def _settle_notes(self, members: list[BatchMember]) -> None:
        """Tell `_saved` the outcome of each save of these members whose
        batch is settled."""
        for member in members:
            if member.batch.is_settled:
                for note in member.notes:
                    self._saved(note, member.batch.error)
                member.notes.clear()

    @contextlib.contextmanager
    def _held(self, command: str | None = None) -> Iterator[None]:
        """Hold the ledger's lock, waiting at most `lock_timeout` for it
        (as long as it takes for `command` None: reads outside commands).

        Letting go of it with nobody else waiting (or a full batch) records
        the open batch first. Raises LedgerBusyError naming `command`.
        """
        timeout = (
            -1 if self.lock_timeout is None or command is None else self.lock_timeout
        )
        with self._waiters_lock:
            self._waiters += 1
        try:
            acquired = self._lock.acquire(timeout=timeout)
        finally:
            with self._waiters_lock:
                self._waiters -= 1
        if not acquired:
            raise LedgerBusyError(command or "read", timeout)
        self._depth += 1
        self._holder = threading.get_ident()
        try:
            if command is not None and self._depth == 1:
                self._take_writer_lock(command)
            yield
        finally:
            self._depth -= 1
            try:
                batch = self._batch
                if (
                    self._depth == 0
                    and batch is not None
                    and (self._waiters == 0 or batch.full)
                ):
                    self._record_batch()
            finally:
                try:
                    if self._depth == 0 and self._batch is None:
                        self._give_writer_lock_up()
                finally:
                    if self._depth == 0:
                        self._holder = None
                    self._lock.release()

    def _take_writer_lock(self, command: str) -> None:
        """Hold the writer lock (if any) before deciding; kept while a batch
        is open. Raises LedgerBusyError when another process held it for
        `lock_timeout`; the store's errors."""
        if self.writer_lock is None or self._writer_held:
            return
        if not self.writer_lock.acquire(self.lock_timeout):
            raise LedgerBusyError(command, self.lock_timeout or 0.0, elsewhere=True)
        self._writer_held = True

    def _give_writer_lock_up(self) -> None:
        """Give the writer lock up: nothing decided here waits to be recorded."""
        if self.writer_lock is not None and self._writer_held:
            self._writer_held = False
            self.writer_lock.release()
