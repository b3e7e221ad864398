"""What changed in the ledger since last asked, read from the event log.

Several server processes may share one database, and with it one set of read
models, so a server cannot learn of changes from its own catch-ups: another
server may have folded the events first. A `ChangeFollower` keeps its own
position in the notification log instead. Each `poll` reads the
notifications after it (ids, aggregates and topics only; nothing is
decoded), catches the read models up, and returns the rows now current for
every allocation, pool and MCP server those notifications touched (for a
server, what `server_status` says of it now, when the follower was given
that reading: the edge knows the server's processes).

It is the source of what agents are told without polling: blocking requests
wake on it, subscriptions are fed by it (adapters/mcp/change_feed.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from allocation_ledger.domain.server_process import server_process_uuid
from allocation_ledger.projections.catchup import LoggedNotification, NotificationLog
from allocation_ledger.projections.store import ReadModelStore
from allocation_ledger.projections.views import AllocationView, CapacityView

ALLOCATION_TOPICS = "allocation-ledger:allocation:"
POOL_TOPICS = "allocation-ledger:pool:"
SERVER_PROCESS_TOPICS = "allocation-ledger:server-process:"

FOLLOW_PAGE = 1000
"""Notifications read per query while following the log."""


@dataclass(frozen=True)
class AllocationChanged:
    """An allocation one or more events changed: its row as it is now.

    `tenant` is the tenant that owns it (None for allocations recorded
    before tenants existed); whoever passes the change on to a caller checks
    it against the caller's visibility.
    """

    allocation_id: str
    pool: str
    tenant: str | None
    state: str
    view: AllocationView


@dataclass(frozen=True)
class PoolChanged:
    """A pool whose capacity, reservations, queue or servers changed."""

    pool: str
    capacity: CapacityView


@dataclass(frozen=True)
class ServerNow:
    """What an MCP server of a pool is now, in get_mcp_status' words.

    `status`: starting, running, idle, stopping, stopped or failed;
    `endpoint`: where agents reach it (None while it has no port);
    `last_exit`: how its last process ended (code, signal, forced, reason:
    those known), only while it is stopped or failed.
    """

    status: str
    endpoint: str | None = None
    last_exit: dict[str, Any] | None = None


ServerStatus = Callable[[str, str], ServerNow | None]
"""Reads what the server (pool, name) is now; None when unknown. Blocking."""


@dataclass(frozen=True)
class ServerChanged:
    """An MCP server of a pool whose processes changed (started, exited,
    restarted, failed, stopped); `now`, what it is after the change (None
    when the follower has no `server_status`, or it could not be read)."""

    pool: str
    name: str
    now: ServerNow | None = None


@dataclass(frozen=True)
class Changes:
    """Everything that changed between two positions of the log, each
    allocation, pool and server once, in the order first touched;
    `position`, the last notification id read."""

    position: int
    allocations: tuple[AllocationChanged, ...] = ()
    pools: tuple[PoolChanged, ...] = ()
    servers: tuple[ServerChanged, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.allocations or self.pools or self.servers)

    def allocation(self, allocation_id: str) -> AllocationChanged | None:
        """The change of one allocation, if it changed."""
        for change in self.allocations:
            if change.allocation_id == allocation_id:
                return change
        return None


class ChangeFollower:
    """Follows a notification log from its own position (module docstring).

    `catch_up(position)` brings the read models up to at least `position`
    (the projector's `catch_up(until=position)`, which reads nothing when
    a query of this process already took them there); `store`, the read
    models it then reads rows from; `server_names`, the MCP server names
    the catalog knows (those of pools' running servers are always known),
    used to name a server process from its aggregate id; `server_status`,
    what a changed server is now, read once the read models caught up (the
    same reading get_mcp_status answers with). Not thread-safe: poll from
    one thread at a time.
    """

    def __init__(
        self,
        log: NotificationLog,
        store: ReadModelStore,
        catch_up: Callable[[int], int],
        *,
        server_names: Iterable[str] = (),
        server_status: ServerStatus | None = None,
        page: int = FOLLOW_PAGE,
    ) -> None:
        self.log = log
        self.store = store
        self.catch_up = catch_up
        self.server_names = frozenset(server_names)
        self.server_status = server_status
        self.page = page
        self.position: int | None = None
        self._servers: dict[UUID, tuple[str, str]] = {}

    def start_at_end(self) -> int:
        """Follow from the log's current end: what happened before is not
        news. Returns the position."""
        self.position = self.log.max_notification_id() or 0
        return self.position

    def poll(self) -> Changes:
        """What changed since the last poll (empty when nothing did).

        The first poll of a follower never started starts at the end and
        reports nothing.
        """
        if self.position is None:
            return Changes(self.start_at_end())
        start = self.position
        end = self.log.max_notification_id() or 0
        if end <= start:
            return Changes(start)
        allocations: dict[UUID, None] = {}
        pools: dict[UUID, None] = {}
        servers: dict[UUID, None] = {}
        while start < end:
            notifications = self.log.select_notifications(
                start, self.page, stop=end, inclusive_of_start=False
            )
            if not notifications:
                break
            for notification in notifications:
                _classify(notification, allocations, pools, servers)
            start = notifications[-1].id
        self.catch_up(start)
        self.position = start
        return Changes(
            start,
            allocations=self._allocations(list(allocations)),
            pools=self._pools(list(pools)),
            servers=self._server_names(list(servers)),
        )

    def _allocations(self, keys: list[UUID]) -> tuple[AllocationChanged, ...]:
        if not keys:
            return ()
        rows = self.store.allocations(set(keys))
        return tuple(
            AllocationChanged(
                allocation_id=view.allocation_id,
                pool=view.pool,
                tenant=view.tenant,
                state=view.state,
                view=view,
            )
            for key in keys
            if (view := rows.get(key)) is not None
        )

    def _pools(self, keys: list[UUID]) -> tuple[PoolChanged, ...]:
        if not keys:
            return ()
        rows = self.store.capacities(set(keys))
        return tuple(
            PoolChanged(pool=view.pool, capacity=view)
            for key in keys
            if (view := rows.get(key)) is not None
        )

    def _server_names(self, keys: list[UUID]) -> tuple[ServerChanged, ...]:
        if not keys:
            return ()
        if any(key not in self._servers for key in keys):
            self._learn_servers()
        return tuple(
            ServerChanged(pool=pool, name=name, now=self._now(pool, name))
            for key in keys
            if (found := self._servers.get(key)) is not None
            for pool, name in (found,)
        )

    def _now(self, pool: str, name: str) -> ServerNow | None:
        if self.server_status is None:
            return None
        return self.server_status(pool, name)

    def _learn_servers(self) -> None:
        """Name every server process id that pools and the catalog can make
        (the ids are derived from pool and name, so they cannot be read
        backwards)."""
        for capacity in self.store.list_capacities():
            for name in self.server_names | set(capacity.servers):
                key = server_process_uuid(capacity.pool, name)
                self._servers[key] = (capacity.pool, name)


def _classify(
    notification: LoggedNotification,
    allocations: dict[UUID, None],
    pools: dict[UUID, None],
    servers: dict[UUID, None],
) -> None:
    topic = notification.topic
    key = notification.originator_id
    if not isinstance(key, UUID):
        key = UUID(str(key))
    if topic.startswith(ALLOCATION_TOPICS):
        allocations[key] = None
    elif topic.startswith(POOL_TOPICS):
        pools[key] = None
    elif topic.startswith(SERVER_PROCESS_TOPICS):
        servers[key] = None
