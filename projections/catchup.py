"""Catching read models up with the event log, and replaying it.

The SQLite event store cannot push notifications, so read models pull: each
catch-up reads the notification log after the store's position and folds the
events in, in batches, each batch written together with its new position.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from domain.allocation import Allocation
from domain.pool import Pool
from projections.folds import fold_allocation, fold_capacity
from projections.store import ReadModelStore
from projections.views import AllocationView, CapacityView

DEFAULT_BATCH_SIZE = 1000


class LoggedNotification(Protocol):
    @property
    def id(self) -> int: ...


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


def fold_event(
    batch: Batch, event: object, position: int, store: ReadModelStore
) -> None:
    """Apply one decoded event to the rows of a batch, loading rows as needed."""
    if isinstance(event, Allocation.Event):
        key = event.originator_id
        if isinstance(event, Allocation.Requested):
            view = fold_allocation(None, event)
            view.sequence = position
            batch.allocations[key] = view
            return
        current = batch.allocations.get(key)
        if current is None:
            current = store.allocations([key]).get(key)
        batch.allocations[key] = fold_allocation(current, event)
    elif isinstance(event, Pool.Event):
        key = event.originator_id
        capacity = batch.capacities.get(key)
        if capacity is None and not isinstance(event, Pool.Created):
            capacity = store.capacities([key]).get(key)
        batch.capacities[key] = fold_capacity(capacity, event)


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

    def catch_up(
        self, *, until: int | None = None, progress: Progress | None = None
    ) -> int:
        """Apply every event after the store's position (up to `until`).

        Returns the position reached. Safe to call from several processes at
        once: each batch is committed only if nobody moved the position first.
        """
        with self._lock:
            while True:
                position = self.store.position()
                if until is not None and position >= until:
                    return position
                notifications = self.log.select_notifications(
                    position,
                    self.batch_size,
                    stop=until,
                    inclusive_of_start=False,
                )
                if not notifications:
                    return position
                batch = Batch()
                for notification in notifications:
                    fold_event(
                        batch, self.decode(notification), notification.id, self.store
                    )
                last = notifications[-1].id
                self.store.commit(
                    expected=position,
                    position=last,
                    allocations=list(batch.allocations.values()),
                    capacities=list(batch.capacities.values()),
                )
                if progress is not None:
                    progress(last, self._end())

    def rebuild(self, *, progress: Progress | None = None) -> int:
        """Drop the read models and replay the whole log into them."""
        self.store.clear()
        return self.catch_up(progress=progress)

    def _end(self) -> int:
        return self.log.max_notification_id() or 0
