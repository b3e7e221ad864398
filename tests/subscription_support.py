"""Helpers for the subscription tests: what a client was told, as it was told."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
from mcp_types import ResourceUpdatedNotification

EVENT = "allocation-ledger/event"
STATE = "allocation-ledger/state"
EXPIRES = "allocation-ledger/expires_at"
SERVER = "allocation-ledger/server"
SERVER_STATUS = "allocation-ledger/server_status"
SERVER_ENDPOINT = "allocation-ledger/server_endpoint"
SERVER_LAST_EXIT = "allocation-ledger/server_last_exit"
SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
LEGACY_SUBSCRIBE = "ignore:resources/(un)?subscribe is removed"
"""A filterwarnings mark for the tests of resources/subscribe, which the
client calls deprecated (it is, from 2026-07-28 on: that is the point)."""


def allocation_uri(allocation_id: str) -> str:
    return f"ledger://allocations/{allocation_id}"


def pool_uri(pool: str = "default") -> str:
    return f"ledger://pools/{pool}/capacity"


class Told:
    """A client's message handler keeping every resources/updated
    notification it receives (from a listen stream or a session's
    subscriptions alike): URI and `_meta`, in order of arrival."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, dict[str, Any]]] = []
        self._arrived = anyio.Event()

    async def __call__(self, message: object) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            meta = dict(message.params.meta or {})
            self.updates.append((message.params.uri, meta))
            self._arrived.set()
            self._arrived = anyio.Event()

    def events(self, uri: str) -> list[str]:
        """The events told about `uri`, in order."""
        return [str(meta.get(EVENT)) for told, meta in self.updates if told == uri]

    def uris(self) -> set[str]:
        return {uri for uri, _ in self.updates}

    async def wait_for(
        self,
        uri: str,
        event: str,
        *,
        timeout: float = 5.0,
        nth: int = 1,
        where: Mapping[str, Any] | None = None,
        after: int = 0,
    ) -> dict[str, Any]:
        """The `_meta` of the `nth` update about `uri` with `event` (and the
        `_meta` items `where`) among those told from the `after`-th on,
        waiting at most `timeout` seconds for it (AssertionError naming what
        came)."""
        wanted = {EVENT: event, **(where or {})}
        try:
            with anyio.fail_after(timeout):
                while True:
                    found = [
                        meta
                        for told, meta in self.updates[after:]
                        if told == uri
                        and all(meta.get(k) == v for k, v in wanted.items())
                    ]
                    if len(found) >= nth:
                        return found[nth - 1]
                    await self._arrived.wait()
        except TimeoutError:
            msg = f"no {wanted!r} update #{nth} for {uri} in {timeout} s"
            msg += f"; told: {self.updates}"
            raise AssertionError(msg) from None
