"""The wall clock, for running ledgers, and the report of its steps back."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from allocation_ledger.domain.clock import ClockBehind

logger = logging.getLogger(__name__)


class SystemClock:
    """The machine's clock, in UTC. It can be stepped back (NTP, a VM restored);
    the ledger records it through a RecordedClock, which holds time until it
    catches up (domain/clock.py)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def log_clock_behind(report: ClockBehind) -> None:
    """Log, as a warning, that the clock read earlier than the ledger's time."""
    if report.stepped_back:
        cause = "the clock was stepped back"
    else:
        cause = "the clock lags times another process recorded"
    logger.warning(
        "%s: it reads %s, %.3f s before the latest time the ledger recorded "
        "(%s); event times hold there until the clock catches up",
        cause,
        report.reading.isoformat(),
        report.seconds,
        report.held_at.isoformat(),
    )
