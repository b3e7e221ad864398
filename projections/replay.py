"""Replaying the log into fresh, in-memory read models, up to any point."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.values import TERMINAL_STATES
from allocation_ledger.projections.catchup import (
    Batch,
    Decode,
    LoggedNotification,
    NotificationLog,
    Progress,
    collector_paused,
    fold_event,
)
from allocation_ledger.projections.store import InMemoryReadModels

REPLAY_BATCH_SIZE = 5000
_ENDED = frozenset(state.value for state in TERMINAL_STATES)


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
    for notifications in logged_batches(
        log, after=after, until=until, batch_size=batch_size, progress=progress
    ):
        for notification in notifications:
            yield notification.id, decode(notification)


def logged_batches(
    log: NotificationLog,
    *,
    after: int = 0,
    until: int | None = None,
    batch_size: int = REPLAY_BATCH_SIZE,
    progress: Progress | None = None,
) -> Iterator[Sequence[LoggedNotification]]:
    """The log after `after` (up to `until`) as batches of notifications,
    not decoded: for a caller that decodes each in its own loop (an audit
    of a million events, without a generator's step per event). Progress
    is told after each batch has been handed over."""
    end = until if until is not None else (log.max_notification_id() or 0)
    position = after
    while True:
        notifications = log.select_notifications(
            position, batch_size, stop=until, inclusive_of_start=False
        )
        if not notifications:
            return
        yield notifications
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
    live_only: bool = False,
) -> Replay:
    """Fold the log into fresh read models with the live folds.

    Stops after `until_position`, or before the first event later than
    `until_time`: the read models as they were at that moment. With
    `live_only`, an allocation is forgotten as soon as it ends (an ended
    allocation takes no further event, design invariant 4; one that comes
    anyway is passed over): the models then hold the pools and the
    unfinished allocations only, and memory does not grow with the history.
    """
    models = InMemoryReadModels()
    batch = Batch()
    allocations = batch.allocations
    position = 0
    count = 0
    with collector_paused():
        for at, event in logged_events(
            log, decode, until=until_position, progress=progress
        ):
            if until_time is not None and _timestamp(event) > until_time:
                break
            if live_only and isinstance(event, Allocation.Event):
                key = event.originator_id
                if key in allocations or isinstance(event, Allocation.Requested):
                    fold_event(batch, event, at, models)
                    if allocations[key].state in _ENDED:
                        del allocations[key]
            else:
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
