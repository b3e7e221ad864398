"""The ledger's changes, told to whoever waits for them in a running server.

A `ChangeFeed` polls its `ChangeFollower` (projections/changes.py) in a
worker thread whenever this server wrote something (`nudge`) and at least
every `interval` seconds otherwise (for writes of other servers on the same
database), and hands every non-empty `Changes` to its listeners on the
event loop. Blocking requests and subscriptions listen to it; waiting on it
holds no lock and no database connection: a waiter is an event in memory.
While nobody waits or subscribes, it only keeps its place at the log's end
(one read of the events table per look), so it costs a server nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.to_thread

from allocation_ledger.projections.changes import ChangeFollower, Changes

logger = logging.getLogger("allocation_ledger.mcp")

DEFAULT_FOLLOW_INTERVAL = 0.25
"""Seconds between two looks at the log when this server wrote nothing."""

MAX_RETRY_SECONDS = 5.0
"""The longest pause between two tries while the log cannot be read."""

Listener = Callable[[Changes], None]


class ChangeFeed:
    """Fans the ledger's changes out to listeners (module docstring).

    Listeners are called on the event loop, in subscription order, must not
    block and should not raise (one that raises is logged and skipped).
    """

    def __init__(
        self, follower: ChangeFollower, *, interval: float = DEFAULT_FOLLOW_INTERVAL
    ) -> None:
        self.follower = follower
        self.interval = interval
        self._listeners: dict[object, Listener] = {}
        self._wanted: dict[object, Callable[[], bool]] = {}
        self._wake: anyio.Event | None = None

    def subscribe(
        self, listener: Listener, *, wanted: Callable[[], bool] | None = None
    ) -> Callable[[], None]:
        """Register `listener`; returns an idempotent unsubscribe.

        `wanted` says whether the listener needs changes right now (say,
        whether anyone subscribed); without it, always. While no listener
        wants changes the feed only keeps its place at the log's end (one
        read of the events table), so a server nobody waits on never reads
        its read models for the feed.
        """
        token = object()
        self._listeners[token] = listener
        if wanted is not None:
            self._wanted[token] = wanted

        def unsubscribe() -> None:
            self._listeners.pop(token, None)
            self._wanted.pop(token, None)

        return unsubscribe

    def wanted(self) -> bool:
        """Whether any listener needs changes now."""
        return any(
            token not in self._wanted or self._wanted[token]()
            for token in self._listeners
        )

    @contextmanager
    def listening(self, listener: Listener) -> Iterator[None]:
        """`listener` subscribed for the length of a `with` block."""
        unsubscribe = self.subscribe(listener)
        try:
            yield
        finally:
            unsubscribe()

    def nudge(self) -> None:
        """Look at the log now rather than at the next interval: something
        was written. Call it on the event loop (after awaiting the command's
        thread), not from a worker thread. A no-op before `run` starts."""
        if self._wake is not None:
            self._wake.set()

    async def poll(self) -> Changes:
        """Read what changed now and tell the listeners; returns it (empty,
        having only moved to the log's end, when nobody wants changes). `run`
        calls it; never two at once (the follower is not thread-safe)."""
        if not self.wanted():
            at = await anyio.to_thread.run_sync(self.follower.start_at_end)
            return Changes(at)
        changes = await anyio.to_thread.run_sync(self.follower.poll)
        if changes:
            self._tell(changes)
        return changes

    async def start(self) -> None:
        """Take the log's end as the place to follow from, before any
        request is served (so no change made afterwards is missed); if the
        log cannot be read now, `run` takes it once it can (logged)."""
        try:
            await anyio.to_thread.run_sync(self.follower.start_at_end)
        except Exception:  # noqa: BLE001 - an outage at start; run retries
            logger.warning(
                "the ledger's log could not be read at start; changes are "
                "followed once it can be"
            )

    async def run(self) -> None:
        """Follow the log until cancelled, from its end when this starts
        (or, if the database cannot be read then, from its end when it
        first can: a server may start during an outage). While the log
        cannot be read, it tries again less and less often (at most every
        MAX_RETRY_SECONDS) and logs one line when that starts and one when
        it ends."""
        self._wake = wake = anyio.Event()
        failures = 0
        while True:
            try:
                if self.follower.position is None:
                    await anyio.to_thread.run_sync(self.follower.start_at_end)
                else:
                    await self.poll()
            except Exception as error:  # noqa: BLE001 - the next round reads again
                failures += 1
                if failures == 1:
                    logger.warning(
                        "reading the ledger's changes failed (%s: %s); "
                        "waiters hear of changes once it can be read again",
                        type(error).__name__,
                        str(error).strip().splitlines()[0] if str(error) else "",
                    )
                await anyio.sleep(min(self.interval * 2**failures, MAX_RETRY_SECONDS))
                continue
            if failures:
                logger.info("reading the ledger's changes again")
                failures = 0
            with anyio.move_on_after(self.interval):
                await wake.wait()
            self._wake = wake = anyio.Event()

    def _tell(self, changes: Changes) -> None:
        for listener in list(self._listeners.values()):
            try:
                listener(changes)
            except Exception:  # - one listener must not starve the others
                logger.exception("a change listener failed; continuing")
