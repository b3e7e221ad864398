"""The wall clock, for running ledgers."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """The machine's clock, in UTC (the ledger keeps its event times monotonic)."""

    def now(self) -> datetime:
        return datetime.now(UTC)
