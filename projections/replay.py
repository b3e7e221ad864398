"""Replaying the log into fresh, in-memory read models, up to any point."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from allocation_ledger.projections.catchup import (
    Batch,
    Decode,
    NotificationLog,
    Progress,
    fold_event,
)
from allocation_ledger.projections.store import InMemoryReadModels

REPLAY_BATCH_SIZE = 5000


def logged_events(
    log: NotificationLog,
    decode: Decode,
    *,
    after: int = 0,
    until: int | None = None,
    batch_size: int = REPLAY_BATCH_SIZE,
    progress: Progress | None = None,
) -> Iterator[tuple[int, object]]:
    """Every event in the log after `after` (up to `until`), with its position."""
    end = until if until is not None else (log.max_notification_id() or 0)
    position = after
    while True:
        notifications = log.select_notifications(
            position, batch_size, stop=until, inclusive_of_start=False
        )
        if not notifications:
            return
        for notification in notifications:
            yield notification.id, decode(notification)
        position = notifications[-1].id
        if progress is not None:
            progress(position, max(end, position))


@dataclass(frozen=True)
class Replay:
    models: InMemoryReadModels
    position: int
    events: int


def replay(
    log: NotificationLog,
    decode: Decode,
    *,
    until_position: int | None = None,
    until_time: datetime | None = None,
    progress: Progress | None = None,
    on_event: Callable[[int, object], None] | None = None,
) -> Replay:
    """Fold the log into fresh read models with the live folds.

    Stops after `until_position`, or before the first event later than
    `until_time`: the read models as they were at that moment.
    """
    models = InMemoryReadModels()
    batch = Batch()
    position = 0
    count = 0
    for at, event in logged_events(
        log, decode, until=until_position, progress=progress
    ):
        if until_time is not None and _timestamp(event) > until_time:
            break
        fold_event(batch, event, at, models)
        if on_event is not None:
            on_event(at, event)
        position = at
        count += 1
    models.commit(
        expected=0,
        position=position,
        allocations=list(batch.allocations.values()),
        capacities=list(batch.capacities.values()),
    )
    return Replay(models, position, count)


def _timestamp(event: object) -> datetime:
    moment = getattr(event, "timestamp", None)
    if not isinstance(moment, datetime):
        msg = f"event {type(event).__qualname__} has no timestamp"
        raise TypeError(msg)
    return moment
