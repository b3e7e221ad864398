"""Catching read models up with the event log, and replaying it.

The SQLite event store cannot push notifications, so read models pull: each
catch-up reads the notification log after the store's position and folds the
events in, in batches, each batch written together with its new position.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable
from uuid import UUID

from eventsourcing.utils import TopicError, resolve_topic

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.pool import Pool
from allocation_ledger.projections.folds import fold_allocation, fold_capacity
from allocation_ledger.projections.listing_documents import (
    ListingDocument,
    document_of,
    fold_document,
    requested_document,
)
from allocation_ledger.projections.store import ReadModelStore
from allocation_ledger.projections.views import AllocationView, CapacityView

DEFAULT_BATCH_SIZE = 1000
# A rebuild folds more events per batch: fewer commits, and fewer rows written
# twice because an allocation's events straddle two batches.
REBUILD_BATCH_SIZE = 20_000


class LoggedNotification(Protocol):
    """A notification as the log gives it: its position, its aggregate and
    the topic of its event class (what prefetching reads before decoding)."""

    @property
    def id(self) -> int: ...

    @property
    def originator_id(self) -> UUID | str: ...

    @property
    def topic(self) -> str: ...


class NotificationLog(Protocol):
    """The part of an event store's recorder that catch-up reads."""

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[LoggedNotification]: ...

    def max_notification_id(self) -> int | None: ...


Decode = Callable[[LoggedNotification], object]
Progress = Callable[[int, int], None]


@dataclass
class Batch:
    """The rows one batch of events touched, folded with the shared folds."""

    allocations: dict[UUID, AllocationView] = field(default_factory=dict)
    capacities: dict[UUID, CapacityView] = field(default_factory=dict)


@runtime_checkable
class BulkLoading(Protocol):
    """A store that can take a rebuild faster (say, with relaxed durability)."""

    def bulk(self) -> AbstractContextManager[None]: ...


@runtime_checkable
class DocumentCommits(Protocol):
    """A store that keeps allocation rows as documents, and takes them as
    such (projections/listing_documents.py): catch-up then folds into the
    documents, without views. `commit_documents` is `commit` otherwise."""

    def commit_documents(
        self,
        *,
        expected: int,
        position: int,
        allocations: Sequence[ListingDocument],
        capacities: Sequence[CapacityView],
    ) -> bool: ...


# What an event class is to the folds (found once per class, not per event).
_OTHER, _REQUESTED, _ALLOCATION, _CREATED, _POOL = range(5)
_KINDS: dict[type[object], int] = {}
_TOPIC_KINDS: dict[str, int] = {}  # the same, by the topics in the log


def _kind(cls: type[object]) -> int:
    found = _KINDS.get(cls)
    if found is None:
        if issubclass(cls, Allocation.Event):
            found = _REQUESTED if issubclass(cls, Allocation.Requested) else _ALLOCATION
        elif issubclass(cls, Pool.Event):
            found = _CREATED if issubclass(cls, Pool.Created) else _POOL
        else:
            found = _OTHER
        _KINDS[cls] = found
    return found


def _topic_kind(topic: str) -> int:
    """What the events of a topic are to the folds (_OTHER when unknown)."""
    found = _TOPIC_KINDS.get(topic)
    if found is None:
        try:
            found = _kind(resolve_topic(topic))
        except TopicError:
            found = _OTHER  # decoding it will say what is wrong
        _TOPIC_KINDS[topic] = found
    return found


def rows_to_load(
    notifications: Sequence[LoggedNotification],
    allocations_held: Collection[UUID] = (),
    capacities_held: Collection[UUID] = (),
) -> tuple[set[UUID], set[UUID]]:
    """The allocation and pool rows these events will fold into that must be
    read from the store: those of aggregates whose first event here is not
    their creation (and that are not held already).

    Read off the notifications (their topics and aggregate ids) before they
    are decoded, so that events can be decoded and folded one at a time, not
    held all at once (which cost a rebuild a tenth of its time)."""
    created: set[UUID | str] = set()
    allocations: set[UUID] = set()
    pools: set[UUID] = set()
    kinds = _TOPIC_KINDS
    for notification in notifications:
        topic = notification.topic
        kind = kinds.get(topic)
        if kind is None:
            kind = _topic_kind(topic)
        if kind == _OTHER:
            continue
        key = notification.originator_id
        if kind in (_REQUESTED, _CREATED):
            created.add(key)
        elif key not in created and isinstance(key, UUID):
            if kind == _ALLOCATION:
                if key not in allocations_held:
                    allocations.add(key)
            elif key not in capacities_held:
                pools.add(key)
    return allocations, pools


def prefetch(
    batch: Batch, notifications: Sequence[LoggedNotification], store: ReadModelStore
) -> None:
    """Load, one query per read model, the rows these events will fold into:
    exactly the rows `fold_event` would otherwise load one by one."""
    allocations, pools = rows_to_load(
        notifications, batch.allocations, batch.capacities
    )
    if allocations:
        batch.allocations.update(store.allocations(allocations))
    if pools:
        batch.capacities.update(store.capacities(pools))


def fold_event(
    batch: Batch, event: object, position: int, store: ReadModelStore
) -> None:
    """Apply one decoded event to the rows of a batch, loading rows as needed."""
    kind = _KINDS.get(type(event))
    if kind is None:
        kind = _kind(type(event))
    if kind == _ALLOCATION:
        changed = cast(Allocation.Event, event)
        key = changed.originator_id
        current = batch.allocations.get(key)
        if current is None:
            current = store.allocations([key]).get(key)
        batch.allocations[key] = fold_allocation(current, changed)
    elif kind == _REQUESTED:
        requested = cast(Allocation.Requested, event)
        view = fold_allocation(None, requested)
        view.sequence = position
        batch.allocations[requested.originator_id] = view
    elif kind in (_POOL, _CREATED):
        _fold_pool(batch.capacities, cast(Pool.Event, event), kind, store)


def _fold_pool(
    capacities: dict[UUID, CapacityView],
    event: Pool.Event,
    kind: int,
    store: ReadModelStore,
) -> None:
    key = event.originator_id
    capacity = capacities.get(key)
    if capacity is None and kind == _POOL:
        capacity = store.capacities([key]).get(key)
    capacities[key] = fold_capacity(capacity, event)


def fold_documents(
    notifications: Sequence[LoggedNotification],
    decode: Decode,
    store: ReadModelStore,
    *,
    prefetching: bool = True,
) -> tuple[dict[UUID, ListingDocument], dict[UUID, CapacityView]]:
    """Decode and fold a batch of events into the rows they change, as
    `prefetch` and `fold_event` do, allocation rows as their documents
    (projections/listing_documents.py): (allocation rows, pool rows), by
    aggregate id. Events are decoded and folded one at a time.

    With `prefetching`, the rows to fold into are read first, in one query per
    read model (finding them costs a pass over the notifications); without,
    each is read when its first event comes (one query per row: for big
    batches, which few aggregates straddle)."""
    rows: dict[UUID, ListingDocument] = {}
    capacities: dict[UUID, CapacityView] = {}
    if prefetching:
        load_allocations, load_pools = rows_to_load(notifications)
        if load_allocations:
            views = store.allocations(load_allocations)
            rows = {key: document_of(view) for key, view in views.items()}
        if load_pools:
            capacities = store.capacities(load_pools)
    kinds = _KINDS
    # The pool of the last pool event, and its row: a pool's events follow
    # one another all along the log, and the log hands out one id object
    # per aggregate (adapters/storage/event_log.py), so most need no look-up.
    pool_key: UUID | None = None
    pool_row: CapacityView | None = None
    for notification in notifications:
        event: Any = decode(notification)
        cls = type(event)
        kind = kinds.get(cls)
        if kind is None:
            kind = _kind(cls)
        if kind == _ALLOCATION:
            key = event.originator_id
            row = rows.get(key)
            if row is None:
                loaded = store.allocations([key]).get(key)
                row = None if loaded is None else document_of(loaded)
                rows[key] = fold_document(row, event)
            else:
                fold_document(row, event)
        elif kind == _REQUESTED:
            rows[event.originator_id] = requested_document(event, notification.id)
        elif kind == _POOL and event.originator_id is pool_key:
            fold_capacity(pool_row, event)
        elif kind != _OTHER:
            _fold_pool(capacities, event, kind, store)
            pool_key = event.originator_id
            pool_row = capacities[pool_key]
    return rows, capacities


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Hold the cycle collector while a batch (or a whole replay) is folded.

    A batch makes tens of thousands of short-lived, acyclic objects; the
    collector would walk them all again and again (a sixth of a rebuild's
    time, a third of an audit's). Reference counting still frees them; the
    collector runs after.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Projector:
    """Keeps a read-model store caught up with a notification log."""

    def __init__(
        self,
        log: NotificationLog,
        decode: Decode,
        store: ReadModelStore,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        self.log = log
        self.decode = decode
        self.store = store
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self.reached = 0
        """The highest position this projector has seen the store at."""

    def catch_up(
        self, *, until: int | None = None, progress: Progress | None = None
    ) -> int:
        """Apply every event after the store's position (up to `until`).

        Returns the position reached. Safe to call from several processes at
        once: each batch is committed only if nobody moved the position first.
        With `until` at or below a position this projector has already seen
        the store reach, it answers that position without reading anything
        (positions never go back).
        """
        with self._lock:
            if until is not None and self.reached >= until:
                return self.reached
            return self._catch_up(until, progress, self.batch_size, prefetching=True)

    def _catch_up(
        self,
        until: int | None,
        progress: Progress | None,
        batch_size: int,
        *,
        prefetching: bool,
    ) -> int:
        while True:
            with collector_paused():
                position, last = self._apply_batch(until, batch_size, prefetching)
            if last is None:
                self.reached = max(self.reached, position)
                return position
            self.reached = max(self.reached, last)
            if progress is not None:
                progress(last, self._end())

    def _apply_batch(
        self, until: int | None, batch_size: int, prefetching: bool
    ) -> tuple[int, int | None]:
        """Fold and commit the next batch: (position before, last applied or
        None). `prefetching`: read the rows it folds into first, in one query
        per read model (see `fold_documents`)."""
        position = self.store.position()
        if until is not None and position >= until:
            return position, None
        notifications = self.log.select_notifications(
            position,
            batch_size,
            stop=until,
            inclusive_of_start=False,
        )
        if not notifications:
            return position, None
        decode = self.decode
        store = self.store
        last = notifications[-1].id
        if isinstance(store, DocumentCommits):
            rows, capacities = fold_documents(
                notifications, decode, store, prefetching=prefetching
            )
            store.commit_documents(
                expected=position,
                position=last,
                allocations=list(rows.values()),
                capacities=list(capacities.values()),
            )
            return position, last
        batch = Batch()
        if prefetching:
            prefetch(batch, notifications, store)
        for notification in notifications:
            fold_event(batch, decode(notification), notification.id, store)
        store.commit(
            expected=position,
            position=last,
            allocations=list(batch.allocations.values()),
            capacities=list(batch.capacities.values()),
        )
        return position, last

    def rebuild(self, *, progress: Progress | None = None) -> int:
        """Drop the read models and replay the whole log into them."""
        with self._lock:
            self.store.clear()
            self.reached = 0
            with self._bulk():
                # Few allocations straddle two of its big batches: each
                # such row is read when its first event comes.
                return self._catch_up(
                    None,
                    progress,
                    max(self.batch_size, REBUILD_BATCH_SIZE),
                    prefetching=False,
                )

    def _bulk(self) -> AbstractContextManager[None]:
        if isinstance(self.store, BulkLoading):
            return self.store.bulk()
        return contextlib.nullcontext()

    def _end(self) -> int:
        return self.log.max_notification_id() or 0
