"""Subscriptions to allocations and pools, in both generations of MCP.

- 2026-07-28: `subscriptions/listen`, served by `LedgerListenHandler`, the
  SDK's `ListenHandler` (mcp/server/subscriptions.py) with the same
  semantics (the acknowledgment is the first frame, every frame carries the
  subscription id in `_meta`, streams and their backlogs are bounded, a
  stream whose client stops reading is ended) and one difference: the
  honored URIs are only those the caller may read, so an allocation of
  another tenant is dropped from the acknowledged filter exactly as an
  unknown one, and every update is checked against the caller's tenant
  again before it is sent (resource_updates.py).
- Earlier versions: `resources/subscribe` and `resources/unsubscribe`
  (`SessionSubscriptions`), answered by `notifications/resources/updated`
  on the subscribing session; a session's subscriptions end with it.

Every update says why in its `_meta` (`allocation-ledger/event`, ...:
docs/tools.md, "Subscriptions").
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectSendStream
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp_types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    EmptyResult,
    ResourceUpdatedNotification,
    ResourceUpdatedNotificationParams,
    SubscribeRequestParams,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)

from allocation_ledger.adapters.http.auth import Access, Caller
from allocation_ledger.adapters.mcp.resource_updates import (
    ResourceUpdates,
    UpdateSubscriber,
)
from allocation_ledger.adapters.mcp.update_meta import ResourceUpdate
from allocation_ledger.domain.tenancy import Visibility

logger = logging.getLogger("allocation_ledger.mcp")

MAX_LISTEN_STREAMS = 1024
MAX_LISTEN_STREAMS_PER_CALLER = 64
"""Listen streams one caller (a token's subject) may hold at once, so that
one caller cannot take every stream of the server from the others."""
"""Listen streams one server holds open at once (the SDK's bound)."""
MAX_BUFFERED_UPDATES = 1024
"""Updates waiting for one slow client before its stream is ended (listen)
or further updates are dropped (a session's subscriptions)."""
MAX_SESSION_SUBSCRIPTIONS = 1024
"""Resources one session may subscribe to with resources/subscribe, and one
listen stream may hold (the first so many asked for are considered)."""

SUBSCRIBABLE = (
    "ledger://allocations/ALLOCATION_ID (an allocation you may read) or "
    "ledger://pools/POOL/capacity"
)


def register_subscriptions(
    server: MCPServer[Any], access: Access, updates: ResourceUpdates
) -> None:
    """Serve `subscriptions/listen`, `resources/subscribe` and
    `resources/unsubscribe` on `server` from `updates`; the
    `resources.subscribe` capability follows (the lowlevel server derives
    it from the handlers). Build the server with `subscriptions=False`, so
    that the SDK's own listen handler (which cannot tell tenants apart) is
    never served."""
    lowlevel = server._lowlevel_server  # no public way to add a spec method
    listen = LedgerListenHandler(updates, access)
    updates.on_stop.append(listen.close)
    lowlevel.add_request_handler(
        "subscriptions/listen", SubscriptionsListenRequestParams, listen
    )
    sessions = SessionSubscriptions(updates, access)
    lowlevel.add_request_handler(
        "resources/subscribe", SubscribeRequestParams, sessions.subscribe
    )
    lowlevel.add_request_handler(
        "resources/unsubscribe", UnsubscribeRequestParams, sessions.unsubscribe
    )


def _caller(access: Access, action: str) -> Caller:
    """The caller of a subscription request (read scope); an invalid-request
    error naming the missing token or scope."""
    try:
        return access.caller("read", action)
    except ToolError as error:
        raise MCPError(code=INVALID_REQUEST, message=str(error)) from error


async def _readable(
    updates: ResourceUpdates, uri: str, caller: Caller, subscriber: UpdateSubscriber
) -> bool:
    """Hold `uri` in `subscriber` if the caller may read it; whether so."""
    allowed, allocation = await anyio.to_thread.run_sync(
        updates.readable, uri, caller.visibility
    )
    if allowed:
        subscriber.add(uri, allocation)
    return allowed


class LedgerListenHandler:
    """Serves `subscriptions/listen` (module docstring): one call, one
    stream of the caller's visible resources' updates, until the client
    goes or `close` is called."""

    def __init__(
        self,
        updates: ResourceUpdates,
        access: Access,
        *,
        max_subscriptions: int = MAX_LISTEN_STREAMS,
        max_per_caller: int = MAX_LISTEN_STREAMS_PER_CALLER,
        max_buffered_events: int = MAX_BUFFERED_UPDATES,
    ) -> None:
        self.updates = updates
        self.access = access
        self.max_subscriptions = max_subscriptions
        self.max_per_caller = max_per_caller
        self.max_buffered_events = max_buffered_events
        self._streams: set[MemoryObjectSendStream[ResourceUpdate]] = set()
        self._held_by: dict[str, int] = {}

    async def __call__(
        self,
        ctx: ServerRequestContext[Any, Any],
        params: SubscriptionsListenRequestParams,
    ) -> SubscriptionsListenResult:
        subscription_id = ctx.request_id
        if subscription_id is None:
            msg = "subscriptions/listen requires a request id"
            raise MCPError(INVALID_REQUEST, msg)
        if len(self._streams) >= self.max_subscriptions:
            raise MCPError(INTERNAL_ERROR, "Subscription limit reached")
        caller = _caller(self.access, "subscribing to resources")
        if self._held_by.get(caller.actor, 0) >= self.max_per_caller:
            msg = (
                f"Subscription limit reached: {caller.actor} holds "
                f"{self.max_per_caller} listen streams; close one (one stream "
                "may carry many resources)"
            )
            raise MCPError(INTERNAL_ERROR, msg)
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        send, receive = anyio.create_memory_object_stream[ResourceUpdate](
            self.max_buffered_events
        )

        def deliver(update: ResourceUpdate) -> None:
            try:
                send.send_nowait(update)
            except anyio.ClosedResourceError:
                pass  # `close` closed it; the loop below is unwinding
            except anyio.WouldBlock:
                logger.warning(
                    "listen stream %r backlog full; ending the stream", subscription_id
                )
                self._streams.discard(send)
                send.close()

        # Held before the acknowledgment, so that an update arriving while
        # it is written waits in the buffer rather than being lost.
        subscriber = self.updates.subscriber(caller.visibility, deliver)
        self._streams.add(send)
        self._held_by[caller.actor] = self._held_by.get(caller.actor, 0) + 1
        try:
            honored = await self._honored(params.notifications, caller, subscriber)
            await ctx.session.send_notification(
                SubscriptionsAcknowledgedNotification(
                    params=SubscriptionsAcknowledgedNotificationParams(
                        notifications=honored, _meta=meta
                    )
                ),
                related_request_id=subscription_id,
            )
            async for update in receive:
                await ctx.session.send_notification(
                    _notification(update, meta), related_request_id=subscription_id
                )
        finally:
            subscriber.close()
            self._streams.discard(send)
            send.close()
            receive.close()
            self._let_go(caller.actor)
        return SubscriptionsListenResult(_meta=meta)

    def _let_go(self, actor: str) -> None:
        left = self._held_by.get(actor, 0) - 1
        if left > 0:
            self._held_by[actor] = left
        else:
            self._held_by.pop(actor, None)

    async def _honored(
        self,
        requested: SubscriptionFilter,
        caller: Caller,
        subscriber: UpdateSubscriber,
    ) -> SubscriptionFilter:
        """What the stream will deliver: the requested resources the caller
        may read, in the order asked (the first MAX_SESSION_SUBSCRIPTIONS
        considered); the tool and prompt lists (which never
        change while the server runs, so nothing is ever sent for them).
        The resource list is not honored: it is never announced."""
        uris: list[str] = []
        asked = list(requested.resource_subscriptions or ())
        for uri in asked[:MAX_SESSION_SUBSCRIPTIONS]:
            if uri not in uris and await _readable(
                self.updates, uri, caller, subscriber
            ):
                uris.append(uri)
        return SubscriptionFilter(
            tools_list_changed=True if requested.tools_list_changed else None,
            prompts_list_changed=True if requested.prompts_list_changed else None,
            resource_subscriptions=uris or None,
        )

    def close(self) -> None:
        """End every open stream gracefully (each sends its result last)."""
        for stream in list(self._streams):
            stream.close()


def _notification(
    update: ResourceUpdate, meta: dict[str, Any]
) -> ResourceUpdatedNotification:
    return ResourceUpdatedNotification(
        params=ResourceUpdatedNotificationParams(
            uri=update.uri, _meta={**update.meta, **meta}
        )
    )


NO_SESSION = (
    "resources/subscribe needs a session the server can write to, and this "
    "server keeps no sessions (stateless HTTP): subscribe with "
    "subscriptions/listen (protocol 2026-07-28) instead"
)
SESSION_STATE_KEY = "allocation-ledger/subscriptions"


class _SessionSubscriber:
    """One session's resources/subscribe subscriptions for one visibility,
    and the task that sends their updates on the session's own stream."""

    def __init__(
        self, updates: ResourceUpdates, connection: Any, visibility: Visibility
    ) -> None:
        self.connection = connection
        self.send, self.receive = anyio.create_memory_object_stream[ResourceUpdate](
            MAX_BUFFERED_UPDATES
        )
        self.subscriber = updates.subscriber(visibility, self.deliver)
        if not updates.start_soon(self.run):
            logger.warning("subscriptions are not running; updates will not be sent")

    def deliver(self, update: ResourceUpdate) -> None:
        try:
            self.send.send_nowait(update)
        except anyio.WouldBlock:
            logger.warning(
                "a session's subscription backlog is full; dropped %s", update.uri
            )
        except anyio.ClosedResourceError:
            pass

    async def run(self) -> None:
        async with self.receive:
            async for update in self.receive:
                await self.connection.send_resource_updated(
                    update.uri, meta=update.meta
                )

    def close(self) -> None:
        self.subscriber.close()
        self.send.close()


class SessionSubscriptions:
    """`resources/subscribe` and `resources/unsubscribe` for sessions of a
    protocol version before 2026-07-28: a session's subscriptions are kept
    with its connection and end with it; each is bound to the subscribing
    caller's tenant."""

    def __init__(self, updates: ResourceUpdates, access: Access) -> None:
        self.updates = updates
        self.access = access

    async def subscribe(
        self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        """Subscribe the session to `params.uri`; an invalid-params error
        for a resource the caller cannot read (another tenant's allocation
        reads as unknown), an invalid-request error on a stateless server
        (no session to tell)."""
        caller = _caller(self.access, f"subscribing to {params.uri}")
        if not _connection(ctx).has_standalone_channel:
            raise MCPError(code=INVALID_REQUEST, message=NO_SESSION)
        held = self._held(ctx, caller.visibility)
        if len(held.subscriber.uris) >= MAX_SESSION_SUBSCRIPTIONS:
            msg = (
                f"a session may subscribe to {MAX_SESSION_SUBSCRIPTIONS} resources; "
                "unsubscribe from some first"
            )
            raise MCPError(code=INVALID_REQUEST, message=msg)
        if not await _readable(self.updates, params.uri, caller, held.subscriber):
            msg = (
                f"cannot subscribe to {params.uri}: no such resource; "
                f"subscribe to {SUBSCRIBABLE}"
            )
            raise MCPError(code=INVALID_PARAMS, message=msg)
        return EmptyResult()

    async def unsubscribe(
        self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        """Unsubscribe the session from `params.uri` (nothing if it was not
        subscribed)."""
        for held in _session_state(ctx).values():
            held.subscriber.discard(params.uri)
        return EmptyResult()

    def _held(
        self, ctx: ServerRequestContext[Any, Any], visibility: Visibility
    ) -> _SessionSubscriber:
        state = _session_state(ctx)
        held = state.get(visibility)
        if held is None:
            connection = _connection(ctx)
            held = _SessionSubscriber(self.updates, connection, visibility)
            state[visibility] = held
            connection.exit_stack.callback(held.close)
        return held


def _connection(ctx: ServerRequestContext[Any, Any]) -> Any:
    """The connection behind a request: its `state` lives as long as the
    session, its `exit_stack` is unwound when the session ends. The SDK
    hands lowlevel handlers only the per-request session proxy."""
    return ctx.session._connection


def _session_state(
    ctx: ServerRequestContext[Any, Any],
) -> dict[Visibility, _SessionSubscriber]:
    state: dict[str, Any] = _connection(ctx).state
    held: dict[Visibility, _SessionSubscriber] = state.setdefault(SESSION_STATE_KEY, {})
    return held


__all__ = [
    "LedgerListenHandler",
    "SessionSubscriptions",
    "register_subscriptions",
]
