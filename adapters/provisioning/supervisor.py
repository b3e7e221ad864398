"""The base of the supervisors of MCP servers and of workers (`Supervisor`):
the watcher thread, events told to `on_event` once locks are released, calls
refused after close() or inside an event loop, a lock per process
(`KeyLocks`). The rest of the core: supervised.py, launch.py, run_records.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, Self, TypeVar

logger = logging.getLogger(__name__)

E = TypeVar("E")
"""The events a supervisor tells (ProcessEvent, WorkerEvent)."""

K = TypeVar("K", bound=Hashable)


def utc_now() -> datetime:
    """The default clock: the current time in UTC."""
    return datetime.now(UTC)


class KeyLocks(Generic[K]):
    """One lock per key, existing only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[K, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: K, *, wait: bool = True) -> Iterator[bool]:
        """Hold key's lock for the block; yields False (not held) when `wait`
        is False and someone else holds it."""
        with self._guard:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            held = lock.acquire(blocking=wait)
            try:
                yield held
            finally:
                if held:
                    lock.release()
        finally:
            with self._guard:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class Supervisor(ABC, Generic[K, E]):
    """The base of a supervisor of processes keyed by K, whose events are E.

    Subclasses implement `_look` (one round of the watcher), call
    `_start_watching()` once their state is set up, and name the watcher's
    thread and what their calls wait for (for the error inside an event loop).
    """

    watcher_name = "process-watcher"
    blocking_work = "a process starts"

    def __init__(
        self,
        data_dir: Path,
        on_event: Callable[[E], None] | None,
        *,
        now: Callable[[], datetime],
        watch_interval_seconds: float,
    ) -> None:
        self.data_dir = Path(data_dir)
        self._on_event = on_event or (lambda event: None)
        self._now = now
        self._lock = threading.Lock()
        self._keys: KeyLocks[K] = KeyLocks()
        self._closing = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch,
            args=(watch_interval_seconds,),
            name=self.watcher_name,
            daemon=True,
        )

    def _start_watching(self) -> None:
        """Start the watcher thread (once the subclass's state is set up)."""
        self._watcher.start()

    def _stop_watching(self) -> None:
        """Refuse new starts; wait until the watcher has finished its round."""
        self._closing.set()
        if threading.current_thread() is not self._watcher:
            self._watcher.join()

    @abstractmethod
    def _look(self) -> None:
        """One round of the watcher: note the processes that exited."""

    def _watch(self, interval: float) -> None:
        while not self._closing.wait(interval):
            try:
                self._look()
            except Exception:
                logger.exception("the %s watcher failed one round", self._watcher.name)

    def _check_open(self, *, loop_only: bool = False) -> None:
        """Raise RuntimeError after close() (unless `loop_only`), or inside a
        running event loop (the calls block)."""
        name = type(self).__name__
        if not loop_only and self._closing.is_set():
            raise RuntimeError(f"{name} is closed")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        raise RuntimeError(
            f"{name} blocks while {self.blocking_work}: call it from a worker "
            "thread (anyio.to_thread.run_sync), not inside a running event loop"
        )

    @contextlib.contextmanager
    def _telling(self) -> Iterator[list[E]]:
        """A list to collect events in while locks are held; what it holds
        when the block ends (also by an error) is told to on_event."""
        events: list[E] = []
        try:
            yield events
        finally:
            self._emit(events)

    def close(self, stop_all: bool = False) -> None:
        """Stop watching (each supervisor says what else, and what `stop_all`
        stops)."""
        self._stop_watching()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _emit(self, events: list[E]) -> list[E]:
        """Tell on_event of the events (no lock held), empty the list; the events."""
        told = list(events)
        events.clear()
        for event in told:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("on_event failed for %s", event)
        return told
