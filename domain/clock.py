"""The ledger's notion of time. The domain never reads a clock; one is injected.

The ledger records the injected clock through `RecordedClock`, which never
runs back (design invariant 8): see docs/operations.md, "Time".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class ManualClock:
    """A clock that only moves when told to: for tests, replays and simulations."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        if self._now.tzinfo is None:
            msg = "ManualClock needs a timezone-aware start time"
            raise ValueError(msg)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        if seconds < 0:
            msg = f"a clock cannot go back ({seconds} s)"
            raise ValueError(msg)
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, moment: datetime) -> None:
        if moment < self._now:
            msg = f"a clock cannot go back from {self._now} to {moment}"
            raise ValueError(msg)
        self._now = moment


@dataclass(frozen=True)
class ClockBehind:
    """The clock read earlier than the time the ledger had already recorded.

    `reading`: what the clock said; `held_at`: the time the ledger used
    instead (the latest it had recorded or read); `stepped_back`: the clock
    went back from its own previous reading (say, stepped by NTP, or a VM
    restored), rather than lagging behind times another process recorded.
    """

    reading: datetime
    held_at: datetime
    stepped_back: bool

    @property
    def seconds(self) -> float:
        """How far behind the clock is."""
        return (self.held_at - self.reading).total_seconds()


SKEW_REPORTED_AFTER = timedelta(seconds=1)
"""Lagging behind times another process recorded (clock skew between servers)
is reported only beyond this; a clock that steps back is always reported."""


class _UnitTime(threading.local):
    """The time of the unit of work running on this thread, once read."""

    depth = 0
    pinned: datetime | None = None


class RecordedClock:
    """The time the ledger records: the injected clock, never running back.

    `now()` is the latest of the clock's reading and every time this ledger
    has recorded, given out or read on a stored aggregate (`observe`): when
    the clock is stepped back, time holds at that mark until the clock
    catches up, and `on_behind` is told of each step back (and once of
    lagging more than `skew_reported_after` behind times read from the
    store), until the clock catches up. The domain reads no clock and logs
    nothing: the adapter that injects the clock reports it.

    Inside `unit()` (a unit of work, on this thread) the first `now()` fixes
    the time: every event of one unit of work is stamped at one moment.
    """

    def __init__(
        self,
        source: Clock,
        on_behind: Callable[[ClockBehind], None] | None = None,
        *,
        skew_reported_after: timedelta = SKEW_REPORTED_AFTER,
    ) -> None:
        self.source = source
        self.on_behind = on_behind
        self.skew_reported_after = skew_reported_after
        self._latest: datetime | None = None
        self._last_reading: datetime | None = None
        self._reported = False
        self._lock = threading.Lock()
        self._unit = _UnitTime()

    @property
    def latest(self) -> datetime | None:
        """The high-water mark: the latest time recorded, given out or read."""
        return self._latest

    def observe(self, moment: datetime) -> None:
        """A time already recorded (the last event of an aggregate just read,
        or of the log): nothing this ledger records will be earlier."""
        with self._lock:
            if self._latest is None or moment > self._latest:
                self._latest = moment

    def now(self) -> datetime:
        unit = self._unit
        if unit.depth and unit.pinned is not None:
            return unit.pinned
        moment = self._read()
        if unit.depth:
            unit.pinned = moment
        return moment

    @contextmanager
    def unit(self) -> Iterator[None]:
        """One unit of work: every `now()` inside it, on this thread, answers
        the time the first one read."""
        unit = self._unit
        outer = unit.pinned
        unit.depth += 1
        unit.pinned = None
        try:
            yield
        finally:
            unit.depth -= 1
            unit.pinned = outer if unit.depth else None

    def _read(self) -> datetime:
        reading = self.source.now()
        report: ClockBehind | None = None
        with self._lock:
            stepped_back = (
                self._last_reading is not None and reading < self._last_reading
            )
            self._last_reading = reading
            latest = self._latest
            if latest is None or reading >= latest:
                self._latest = reading
                self._reported = False
                return reading
            if stepped_back or (
                not self._reported and latest - reading > self.skew_reported_after
            ):
                self._reported = True
                report = ClockBehind(reading, latest, stepped_back)
        if report is not None and self.on_behind is not None:
            self.on_behind(report)
        return latest
