"""Calls that wait for a queued request: request_resources with wait=true and
block_seconds, and await_allocation.

A waiting call reads its allocation once (as get_allocation does, so an
unknown id or another tenant's is refused alike), then listens to the
server's change feed (change_feed.py) with an `anyio.Event` of its own: it
holds no lock, no database connection and no worker thread while it waits.
It wakes when its allocation or its pool changes, and decides on the rows the
feed carries (read from the read models once per change for every listener,
after catching them up: a hundred waiters woken by one release cost no
hundred reads); its queue position and what it waits for are worked out
from its pool's row. It also wakes at its queue deadline (the expiry sweep is
run then, which fails it with `queue_timeout`) and when its block_seconds
pass. Its own server's writes wake it at once (LedgerServer
nudges the feed after every writing tool); other servers' within the feed's
interval.

While it waits it tells the client, if the client sent a progress token,
where it stands: an MCP progress notification whenever its queue position or
what it waits for changes, `progress` counting them (1, 2, 3, ...). A
cancelled call (MCP cancellation) stops waiting and changes nothing: the
request stays queued; release_resources withdraws it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.http.auth import Access, Caller
from allocation_ledger.adapters.mcp.change_feed import ChangeFeed
from allocation_ledger.adapters.mcp.schemas.allocation_arguments import (
    AllocationIdArg,
    AwaitSecondsArg,
)
from allocation_ledger.adapters.mcp.schemas.allocation_listing import AllocationDetail
from allocation_ledger.adapters.mcp.schemas.allocation_results import (
    RequestResourcesResult,
    request_result_of_view,
)
from allocation_ledger.adapters.mcp.schemas.refusals import reason_of
from allocation_ledger.adapters.mcp.schemas.scheduling import queue_order
from allocation_ledger.adapters.mcp.tools.group import ToolGroup
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.capacity import AMOUNTS
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.domain.values import (
    INSUFFICIENT_CAPACITY,
    QUEUED_AHEAD,
    QUOTA_EXCEEDED,
    AllocationState,
    Dimension,
    Rejection,
)
from allocation_ledger.projections.changes import Changes
from allocation_ledger.projections.views import AllocationView, CapacityView

logger = logging.getLogger("allocation_ledger.mcp")

QUEUED = AllocationState.QUEUED.value
WAITING_STATES = frozenset({QUEUED, AllocationState.PENDING.value})
"""States a waiting call waits out: queued (for a grant) and pending (for
its MCP servers and workers to start). Any other state is an answer."""

DEADLINE_GRACE_SECONDS = 0.05
"""How long after a queue deadline a waiting call looks: the deadline has
surely passed on the ledger's clock by then."""

Detail = Callable[[str, Visibility], AllocationDetail]
"""get_allocation's answer for an allocation id and a caller's visibility."""


@dataclass(frozen=True)
class Sighting:
    """What a waiting call last saw: its allocation's row, and its pool's
    row (None if the pool could not be read)."""

    view: AllocationView
    capacity: CapacityView | None

    @property
    def waiting(self) -> bool:
        return self.view.state in WAITING_STATES

    def queue_place(self, now: datetime) -> tuple[int, int] | None:
        """(position, length) of its pool's queue, 1 = served next; None when
        it is not in the queue its pool's row shows."""
        if self.capacity is None or self.view.allocation_id not in self.capacity.queue:
            return None
        order = [e.allocation_id for e in queue_order(self.capacity, now)]
        return order.index(self.view.allocation_id) + 1, len(order)


class Watch:
    """One waiting call's ear on the change feed: `hear` (a feed listener)
    keeps the allocation's and its pool's latest rows as the feed read them
    (after catching the read models up) and sets `wake`; `take` hands them
    over and arms a new `wake`."""

    def __init__(self, allocation_id: str) -> None:
        self.allocation_id = allocation_id
        self.pool: str | None = None
        """Its pool, once known (changes of other pools are not heard)."""
        self.wake = anyio.Event()
        self.view: AllocationView | None = None
        self.capacity: CapacityView | None = None

    def hear(self, changes: Changes) -> None:
        change = changes.allocation(self.allocation_id)
        if change is not None:
            self.view = change.view
            self.wake.set()
        for pool in changes.pools:
            if pool.pool == self.pool:
                self.capacity = pool.capacity
                self.wake.set()

    def take(self) -> tuple[AllocationView | None, CapacityView | None]:
        view, capacity = self.view, self.capacity
        self.view, self.capacity = None, None
        self.wake = anyio.Event()
        return view, capacity

    def seen(self, last: Sighting) -> Sighting:
        """`last` with what was heard since (`take`): a newer row of the
        allocation or of its pool replaces the one seen."""
        view, capacity = self.take()
        if capacity is not None and (
            last.capacity is None or capacity.version >= last.capacity.version
        ):
            last = replace(last, capacity=capacity)
        if view is not None and view.version >= last.view.version:
            last = replace(last, view=view)
        return last


class ProgressReport:
    """The progress notifications of one waiting call: one whenever its
    message changes, `progress` counting them from 1, no total. Without a
    client progress token the SDK sends nothing."""

    def __init__(self, ctx: Context[Any, Any] | None) -> None:
        self.ctx = ctx
        self.sent = 0
        self.last: str | None = None

    async def tell(self, message: str) -> None:
        if self.ctx is None or message == self.last:
            return
        self.last = message
        self.sent += 1
        try:
            await self.ctx.report_progress(self.sent, None, message)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as error:
            # A client gone mid-wait: the call ends when it is cancelled.
            logger.debug("a progress notification was not sent: %s", error)


def _amount(dimension: Dimension, amount: float) -> str:
    """`amount` of `dimension` in words, client units (cpu cores, memory MB)."""
    shown = f"{amount:g}"
    match dimension:
        case Dimension.WORKERS:
            return f"{shown} worker{'' if amount == 1 else 's'}"
        case Dimension.CPU:
            return f"{shown} CPU core{'' if amount == 1 else 's'}"
        case Dimension.MEMORY:
            return f"{shown} MB of memory"
        case _:
            return f"{shown} MCP server port{'' if amount == 1 else 's'}"


def waits_for(rejection: Rejection | None) -> str:
    """What a queued request waits for, in words, e.g. "waiting for 2
    workers (1 free)"."""
    if rejection is None:
        return "waiting for room"
    reason = reason_of(rejection)
    dimension = rejection.dimension
    wanted = _amount(dimension, reason.requested or 0)
    left = f"{reason.available or 0:g}"
    if reason.code == INSUFFICIENT_CAPACITY:
        return f"waiting for {wanted} ({left} free)"
    if reason.code == QUOTA_EXCEEDED:
        return f"waiting for its tenant's quota to allow {wanted} ({left} left)"
    if reason.code == QUEUED_AHEAD:
        return f"waiting behind the requests ahead of it (it needs {wanted})"
    return f"waiting ({reason.code})"


def blocked_now(seen: Sighting, place: tuple[int, int] | None) -> Rejection | None:
    """What keeps a queued request waiting, from its pool's row as it is
    now: the first dimension (workers, cpu, memory) the pool is short of,
    else its tenant's quota, else the requests ahead of it; else what was
    recorded when it was queued (e.g. MCP server ports)."""
    view, capacity = seen.view, seen.capacity
    recorded = (
        None if view.waiting_for is None else Rejection.from_dict(view.waiting_for)
    )
    entry = None if capacity is None else capacity.queue.get(view.allocation_id)
    if capacity is None or entry is None:
        return recorded
    needed = entry.resources
    free = capacity.total - capacity.reserved
    for dimension in AMOUNTS:
        wanted, left = needed.amount(dimension), free.amount(dimension)
        if wanted > left:
            return Rejection(INSUFFICIENT_CAPACITY, dimension, wanted, max(left, 0))
    quota = capacity.quotas.get(entry.tenant or "")
    if quota is not None:
        held = capacity.held_by_tenant.get(entry.tenant or "")
        for dimension in AMOUNTS:
            wanted = needed.amount(dimension)
            left = quota.amount(dimension) - (held.amount(dimension) if held else 0)
            if wanted > left:
                return Rejection(QUOTA_EXCEEDED, dimension, wanted, max(left, 0))
    if place is not None and place[0] > 1:
        for dimension in AMOUNTS:
            if needed.amount(dimension) > 0:
                return Rejection(QUEUED_AHEAD, dimension, needed.amount(dimension), 0)
        # MCP servers only
        return Rejection(QUEUED_AHEAD, Dimension.MCP_PORTS, len(entry.servers), 0)
    return recorded


def progress_message(seen: Sighting, now: datetime) -> str:
    """Where a waiting allocation stands, e.g. "queued at position 2 of 3
    in pool default, waiting for 2 workers (1 free)"."""
    pool = seen.view.pool
    if seen.view.state == AllocationState.PENDING.value:
        return (
            f"granted in pool {pool}, waiting for its MCP servers and workers to start"
        )
    place = seen.queue_place(now)
    where = (
        f"queued in pool {pool}"
        if place is None
        else f"queued at position {place[0]} of {place[1]} in pool {pool}"
    )
    return f"{where}, {waits_for(blocked_now(seen, place))}"


class AllocationWaits(ToolGroup):
    """await_allocation, and the wait of request_resources(block_seconds)
    (module docstring). `changes` is the server's change feed; `detail`,
    get_allocation's answer."""

    def __init__(
        self,
        service: AllocationService,
        access: Access,
        changes: ChangeFeed,
        detail: Detail,
    ) -> None:
        super().__init__(service, access)
        self.changes = changes
        self.detail = detail
        self._sweeping = anyio.Lock()

    async def await_allocation(
        self,
        allocation_id: AllocationIdArg,
        block_seconds: AwaitSecondsArg = 60,
        ctx: Context[Any, Any] | None = None,
    ) -> AllocationDetail:
        """Wait until a queued or pending allocation is decided, then show it.

        A queued allocation is waited on until it is granted (state "active",
        with endpoints), fails (e.g. reason code "queue_timeout" when its
        max_wait_seconds pass) or is released; a pending one until it is
        active or failed; any other state is shown at once. After
        block_seconds (default 60, at most 240) it is shown as it is, still
        queued or pending: call again to wait on. The answer is get_allocation's.
        With a progress token, a progress notification tells each change of
        its queue position or of what it waits for, e.g. "queued at position 2
        of 3 in pool default, waiting for 2 workers (0 free)". Cancelling the
        call changes nothing: the request stays queued (release_resources
        withdraws it). An unknown allocation_id is an error; without the admin
        scope, so is another tenant's, with the same words.
        """
        caller = self._caller("await_allocation")
        await self.wait(allocation_id, caller.visibility, block_seconds, ctx)
        return await self._call(lambda: self.detail(allocation_id, caller.visibility))

    async def finish_request(
        self,
        reply: RequestResourcesResult,
        *,
        caller: Caller,
        block_seconds: int,
        ctx: Context[Any, Any] | None,
    ) -> RequestResourcesResult:
        """request_resources' answer after waiting up to `block_seconds` for
        the request `reply` answers (queued or pending) to be decided; other
        replies are returned as they are. The request is saved: a read that
        fails while waiting never turns it into an error (a retry without a
        request_id would request again); `reply` is returned then."""
        if reply.dry_run or reply.state not in WAITING_STATES:
            return reply
        try:
            seen = await self.wait(
                reply.allocation_id, caller.visibility, block_seconds, ctx
            )
            capacity = seen.capacity
            size = (
                capacity.worker_size
                if capacity is not None
                else await self._call(lambda: self._worker_size(seen.view.pool))
            )
        except ToolError as error:
            logger.warning(
                "waiting for %s stopped, answering it as saved: %s",
                reply.allocation_id,
                error,
            )
            return reply
        place = seen.queue_place(self.ledger.clock.now())
        return request_result_of_view(
            seen.view,
            worker_size=size,
            replayed=reply.replayed,
            expired_first=reply.expired_first,
            preempted=reply.preempted,
            queue_position=None if place is None else place[0],
        )

    async def wait(
        self,
        allocation_id: str,
        visibility: Visibility,
        block_seconds: float,
        ctx: Context[Any, Any] | None,
    ) -> Sighting:
        """Wait while the allocation is queued or pending, at most
        `block_seconds`; what was seen last. Raises ToolError as get_allocation
        does for an unknown (or, per `visibility`, unseen) id, or a failed read."""
        ends = anyio.current_time() + block_seconds
        watch = Watch(allocation_id)
        progress = ProgressReport(ctx)
        with self.changes.listening(watch.hear):
            watch.take()
            seen = await self._read(allocation_id, visibility)
            watch.pool = seen.view.pool
            while True:
                if not seen.waiting:
                    return seen
                now = self.ledger.clock.now()
                await progress.tell(progress_message(seen, now))
                left = ends - anyio.current_time()
                if left <= 0:
                    return seen
                deadline = seen.view.queue_deadline
                due = math.inf
                if deadline is not None and seen.view.state == QUEUED:
                    due = (deadline - now).total_seconds()
                    if due <= 0:
                        return await self._time_out(allocation_id, visibility)
                    due += DEADLINE_GRACE_SECONDS
                with anyio.move_on_after(min(left, due)):
                    await watch.wake.wait()
                seen = watch.seen(seen)

    async def _time_out(self, allocation_id: str, visibility: Visibility) -> Sighting:
        """At a queued allocation's deadline: run the expiry sweep (the
        sweeper's work, done now: it fails queued requests whose wait ran out
        with queue_timeout), one waiting call at a time; the allocation as it
        then is. A sweep that fails is logged; the allocation is then shown
        still queued, and the sweeper times it out on its next round."""
        async with self._sweeping:
            seen = await self._read(allocation_id, visibility)
            deadline = seen.view.queue_deadline
            if not seen.waiting or deadline is None:
                return seen
            if deadline > self.ledger.clock.now():
                return seen
            try:
                await anyio.to_thread.run_sync(self.ledger.expire_due)
            except Exception:  # - logged; the sweeper tries again
                logger.exception(
                    "the sweep at the queue deadline of %s failed", allocation_id
                )
                return seen
            self.changes.nudge()
            return await self._read(allocation_id, visibility)

    async def _read(self, allocation_id: str, visibility: Visibility) -> Sighting:
        """The allocation and its pool as the read models have them now (a
        thread, as every tool reads); errors as get_allocation's."""

        def work() -> Sighting:
            view = self.read.allocation(allocation_id, visibility)
            return Sighting(view, self.read.store.get_capacity(view.pool))

        return await self._call(work)
