"""Which subscribed resources changed, and who may be told.

`ResourceUpdates` turns the ledger's changes (the change feed, fed by the
event log: change_feed.py) into `ResourceUpdate`s of the two resources a
client may subscribe to, `ledger://allocations/{allocation_id}` and
`ledger://pools/{pool}/capacity`, and hands each to the subscribers that
asked for its URI and may see it. Both protocol generations subscribe
through it (subscriptions.py): `subscriptions/listen` streams and
`resources/subscribe` sessions.

The tenant rule (docs/tools.md, "Tenants"): a subscriber is bound to the
visibility of the caller that subscribed. An update about an allocation
carries the allocation's tenant, read with the change itself, and is
checked against that visibility at every delivery, so no event about
another tenant's allocation reaches it; a pool's capacity is visible to all.

When one of an allocation's MCP servers changes (`mcp_server_changed`), the
update says what the server is now, in get_mcp_status' words, as the change
feed read it (`ServerChanged.now`).

It also tells an allocation's subscribers `lease_warning_seconds` before its
lease runs out (event `lease_ending`), on the ledger's own clock; a renewal
moves the warning. Only subscribed allocations are watched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
from anyio.abc import TaskGroup

from allocation_ledger.adapters.mcp.change_feed import ChangeFeed
from allocation_ledger.adapters.mcp.resources import allocation_uri, pool_capacity_uri
from allocation_ledger.adapters.mcp.schemas.units import iso
from allocation_ledger.adapters.mcp.update_meta import (
    EVENT_META,
    EXPIRES_META,
    POOL_META,
    STATE_META,
    Deliver,
    ResourceUpdate,
    allocation_event,
    server_meta,
)
from allocation_ledger.domain.clock import Clock
from allocation_ledger.domain.errors import AllocationNotFoundError
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.projections.changes import Changes
from allocation_ledger.projections.queries import ReadModels
from allocation_ledger.projections.views import AllocationView

logger = logging.getLogger("allocation_ledger.mcp")

_ALLOCATION = re.compile(r"ledger://allocations/([^/?#\s]+)")
_POOL_CAPACITY = re.compile(r"ledger://pools/([^/?#\s]+)/capacity")

LEASE_CHECK_SECONDS = 1.0
"""Longest the lease watcher sleeps before reading the clock again (a
manual clock moves without telling anyone)."""

LIVE_STATES = frozenset({"pending", "active", "releasing"})


@dataclass
class _Watch:
    """What a watched allocation was when last seen, and how many
    subscriptions hold it."""

    allocation_id: str
    pool: str
    tenant: str | None
    state: str
    expires_at: datetime | None
    renewals: int
    servers: frozenset[str]
    version: int
    holders: int = 0
    warned_for: datetime | None = None

    def see(self, view: AllocationView) -> None:
        if view.expires_at != self.expires_at:
            self.warned_for = None
        self.state = view.state
        self.expires_at = view.expires_at
        self.renewals = view.renewals
        self.servers = frozenset(s.name for s in view.servers)
        self.version = view.version


class UpdateSubscriber:
    """One subscription holder (a listen stream, or a session's
    resources/subscribe calls): the URIs it holds, seen with `visibility`.
    Made by `ResourceUpdates.subscriber`; `close` when done."""

    def __init__(
        self, hub: ResourceUpdates, visibility: Visibility, deliver: Deliver
    ) -> None:
        self.hub = hub
        self.visibility = visibility
        self.deliver = deliver
        self.uris: set[str] = set()
        self._watched: set[str] = set()

    def add(self, uri: str, allocation: AllocationView | None = None) -> None:
        """Hold `uri`; for an allocation's URI, `allocation` is its row as
        read when subscribing (visible to this subscriber)."""
        if uri in self.uris:
            return
        self.uris.add(uri)
        if allocation is not None:
            self._watched.add(allocation.allocation_id)
            self.hub._watch(allocation)

    def discard(self, uri: str) -> None:
        """Stop holding `uri` (nothing if not held)."""
        if uri not in self.uris:
            return
        self.uris.discard(uri)
        allocation_id = allocation_of(uri)
        if allocation_id is not None and allocation_id in self._watched:
            self._watched.discard(allocation_id)
            self.hub._unwatch(allocation_id)

    def close(self) -> None:
        """Drop every URI and stop receiving updates; idempotent."""
        for uri in list(self.uris):
            self.discard(uri)
        self.hub._subscribers.pop(self, None)

    def offer(self, update: ResourceUpdate) -> None:
        """Deliver `update` if this subscriber holds its URI and may see it."""
        if update.uri not in self.uris:
            return
        if update.private and not self.visibility.includes(update.tenant):
            return
        self.deliver(update)


def allocation_of(uri: str) -> str | None:
    """The allocation id of an allocation resource's URI, else None."""
    found = _ALLOCATION.fullmatch(uri)
    return found.group(1) if found else None


def pool_of(uri: str) -> str | None:
    """The pool of a pool capacity resource's URI, else None."""
    found = _POOL_CAPACITY.fullmatch(uri)
    return found.group(1) if found else None


@dataclass
class _Running:
    group: TaskGroup
    wake: anyio.Event = field(default_factory=anyio.Event)


class ResourceUpdates:
    """The subscriptions of one server, fed by its change feed (module
    docstring). `read_models` answers what a caller may subscribe to;
    `clock`, the ledger's, times the lease warnings, sent
    `lease_warning_seconds` before an allocation's `expires_at`."""

    def __init__(
        self,
        read_models: ReadModels,
        clock: Clock,
        *,
        lease_warning_seconds: float,
    ) -> None:
        self.read_models = read_models
        self.clock = clock
        self.lease_warning_seconds = lease_warning_seconds
        self._subscribers: dict[UpdateSubscriber, None] = {}
        self._watches: dict[str, _Watch] = {}
        self._running: _Running | None = None
        self.on_stop: list[Callable[[], None]] = []
        """Called when `running` ends (before its tasks are cancelled): the
        listen handler ends its streams gracefully there."""

    def follow(self, feed: ChangeFeed) -> Callable[[], None]:
        """Listen to `feed`; returns the unsubscribe."""
        return feed.subscribe(self.changed, wanted=lambda: bool(self._subscribers))

    def subscriber(self, visibility: Visibility, deliver: Deliver) -> UpdateSubscriber:
        """A new subscription holder for a caller who sees `visibility`."""
        subscriber = UpdateSubscriber(self, visibility, deliver)
        self._subscribers[subscriber] = None
        return subscriber

    def readable(
        self, uri: str, visibility: Visibility
    ) -> tuple[bool, AllocationView | None]:
        """Whether a caller who sees `visibility` may subscribe to `uri`,
        and, for an allocation, its row now. An allocation of another
        tenant reads exactly as one that does not exist; every existing
        pool (and the default one) is visible to all. Blocking: run it off
        the event loop."""
        allocation_id = allocation_of(uri)
        if allocation_id is not None:
            try:
                return True, self.read_models.allocation(allocation_id, visibility)
            except AllocationNotFoundError:
                return False, None
        pool = pool_of(uri)
        if pool is not None:
            return self.read_models.capacity(pool) is not None, None
        return False, None

    # -- from the change feed ---------------------------------------------------

    def changed(self, changes: Changes) -> None:
        """Tell subscribers what `changes` changed (a feed listener)."""
        if not self._subscribers:
            return
        for allocation in changes.allocations:
            watch = self._watches.get(allocation.allocation_id)
            if watch is None:
                continue  # nobody holds it
            if allocation.view.version <= watch.version:
                continue  # seen when subscribing: not news
            event = allocation_event(watch.state, watch.renewals, allocation.view)
            watch.see(allocation.view)
            watch.tenant = allocation.tenant
            self.publish(self._allocation_update(watch, event))
        for pool in changes.pools:
            self.publish(
                ResourceUpdate(
                    pool_capacity_uri(pool.pool),
                    {EVENT_META: "capacity_changed", POOL_META: pool.pool},
                )
            )
        for server in changes.servers:
            for watch in list(self._watches.values()):
                if (
                    watch.pool == server.pool
                    and server.name in watch.servers
                    and watch.state in LIVE_STATES
                ):
                    update = self._allocation_update(watch, "mcp_server_changed")
                    update.meta.update(server_meta(server))
                    self.publish(update)
        self._wake()

    def publish(self, update: ResourceUpdate) -> None:
        """Offer `update` to every subscriber (each checks URI and tenant)."""
        for subscriber in list(self._subscribers):
            try:
                subscriber.offer(update)
            except Exception:  # - one subscriber must not starve the others
                logger.exception("delivering %s failed; continuing", update.uri)

    def _allocation_update(self, watch: _Watch, event: str) -> ResourceUpdate:
        meta: dict[str, Any] = {EVENT_META: event, STATE_META: watch.state}
        if watch.expires_at is not None:
            meta[EXPIRES_META] = iso(watch.expires_at)
        return ResourceUpdate(
            allocation_uri(watch.allocation_id),
            meta,
            tenant=watch.tenant,
            private=True,
        )

    # -- watched allocations and lease warnings -----------------------------------

    def _watch(self, view: AllocationView) -> None:
        watch = self._watches.get(view.allocation_id)
        if watch is None:
            watch = _Watch(
                allocation_id=view.allocation_id,
                pool=view.pool,
                tenant=view.tenant,
                state=view.state,
                expires_at=view.expires_at,
                renewals=view.renewals,
                servers=frozenset(s.name for s in view.servers),
                version=view.version,
            )
            self._watches[view.allocation_id] = watch
        watch.holders += 1
        self._wake()

    def _unwatch(self, allocation_id: str) -> None:
        watch = self._watches.get(allocation_id)
        if watch is None:
            return
        watch.holders -= 1
        if watch.holders <= 0:
            del self._watches[allocation_id]

    def warn_due(self) -> float | None:
        """Send every lease warning now due; the seconds until the next one
        (None: none pending)."""
        now = self.clock.now()
        soonest: float | None = None
        for watch in list(self._watches.values()):
            if (
                watch.state != "active"
                or watch.expires_at is None
                or watch.warned_for == watch.expires_at
            ):
                continue
            left = (watch.expires_at - now).total_seconds()
            if left <= 0:
                continue  # ran out: the expiry itself is the news
            until = left - self.lease_warning_seconds
            if until <= 0:
                watch.warned_for = watch.expires_at
                self.publish(self._allocation_update(watch, "lease_ending"))
            elif soonest is None or until < soonest:
                soonest = until
        return soonest

    async def _watch_leases(self, running: _Running) -> None:
        while True:
            running.wake = anyio.Event()
            try:
                due = self.warn_due()
            except Exception:  # - logged; the next round reads the clock again
                logger.exception("checking leases for warnings failed")
                due = LEASE_CHECK_SECONDS
            if due is None:
                await running.wake.wait()
                continue
            with anyio.move_on_after(min(due, LEASE_CHECK_SECONDS)):
                await running.wake.wait()

    def _wake(self) -> None:
        if self._running is not None:
            self._running.wake.set()

    def start_soon(self, job: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Run `job` in this hub's task group (a session's sender); False
        when the hub is not running."""
        if self._running is None:
            return False
        self._running.group.start_soon(job)
        return True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ResourceUpdates]:
        """Watch leases (and run sessions' senders) while the context is open."""
        async with anyio.create_task_group() as group:
            running = _Running(group)
            self._running = running
            group.start_soon(self._watch_leases, running)
            try:
                yield self
            finally:
                if self._running is running:
                    self._running = None
                for stop in self.on_stop:
                    stop()
                group.cancel_scope.cancel()
