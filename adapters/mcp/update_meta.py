"""What a subscribed resource's update says: `ResourceUpdate` and its `_meta`.

The `_meta` keys and the event words are part of the MCP contract
(docs/tools.md, "Subscriptions"): `allocation-ledger/event` says why an
update was sent (`allocation_event`), the others what the allocation, pool
or MCP server is now (`server_meta` for `mcp_server_changed`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from allocation_ledger.projections.changes import ServerChanged
from allocation_ledger.projections.views import AllocationView

EVENT_META = "allocation-ledger/event"
"""`_meta` key of every update: why it was sent (see `allocation_event`)."""
STATE_META = "allocation-ledger/state"
EXPIRES_META = "allocation-ledger/expires_at"
POOL_META = "allocation-ledger/pool"
SERVER_META = "allocation-ledger/server"
SERVER_STATUS_META = "allocation-ledger/server_status"
"""With `mcp_server_changed`: the server's status now, get_mcp_status' word."""
SERVER_ENDPOINT_META = "allocation-ledger/server_endpoint"
SERVER_LAST_EXIT_META = "allocation-ledger/server_last_exit"


@dataclass(frozen=True)
class ResourceUpdate:
    """A subscribed resource changed. `uri`, the resource; `tenant`, the
    tenant of the allocation it is about, checked against each subscriber's
    visibility when `private` (pools are not private); `meta`, the reason,
    sent as the notification's `_meta`."""

    uri: str
    meta: dict[str, Any]
    tenant: str | None = None
    private: bool = False


Deliver = Callable[[ResourceUpdate], None]
"""Takes an update on the event loop; must not block."""


def server_meta(server: ServerChanged) -> dict[str, Any]:
    """What an `mcp_server_changed` update says of the server: its name,
    and, when read, its status now (get_mcp_status' word), its endpoint
    and, stopped or failed, how its last process ended."""
    meta: dict[str, Any] = {SERVER_META: server.name}
    now = server.now
    if now is None:
        return meta
    meta[SERVER_STATUS_META] = now.status
    if now.endpoint is not None:
        meta[SERVER_ENDPOINT_META] = now.endpoint
    if now.last_exit:
        meta[SERVER_LAST_EXIT_META] = dict(now.last_exit)
    return meta


def allocation_event(
    before_state: str, before_renewals: int, after: AllocationView
) -> str:
    """Why an allocation's subscribers are told: `granted` (out of the
    queue), `activated`, `renewed`, `releasing`, `released`, `expired`,
    `preempted`, `failed`, `queued`, `pending`; `changed` for anything else
    (say, a new expiry without a renewal)."""
    if after.state != before_state:
        if before_state == "queued" and after.state in ("pending", "active"):
            return "granted"
        if after.state == "active":
            return "activated"
        return after.state
    if after.renewals != before_renewals:
        return "renewed"
    return "changed"
