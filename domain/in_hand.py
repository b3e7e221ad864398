"""Which allocations this process's commands are provisioning or tearing
down right now, so that `resume` (and the sweeper's search for interrupted
work) leaves them to the command doing them instead of starting them a
second time. Another process's work in hand is told apart by its age only
(the provisioning timeout)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class InHand:
    """A thread-safe count of the commands holding each allocation id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[str] = Counter()

    @contextmanager
    def holding(self, allocation_id: str) -> Iterator[None]:
        """Mark `allocation_id` in hand for the duration of the block."""
        with self._lock:
            self._held[allocation_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[allocation_id] -= 1
                if self._held[allocation_id] <= 0:
                    del self._held[allocation_id]

    def __contains__(self, allocation_id: object) -> bool:
        with self._lock:
            return allocation_id in self._held
