"""The Host and Origin check in front of every path of the HTTP app (the
allowed values and why: hosts.py)."""

from __future__ import annotations

from collections.abc import Iterable

from mcp.server.transport_security import (
    TransportSecurityMiddleware,
    TransportSecuritySettings,
)
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send


class HostCheck:
    """ASGI middleware: the Host and Origin check, before anything else.

    Every HTTP request but those to `exempt` paths (the health check, which
    load balancers send with whatever Host) is checked against `hosts` and
    `origins` (patterns from `host_patterns` and `origin_patterns`) with the
    MCP SDK's own matching, before authentication (so a rebound request is
    told 421, not 401), before any redirect (`/mcp/` to `/mcp`) and for
    every path, `/metrics` included. 421 for a Host not allowed, 403 for an
    Origin not allowed, as the SDK answers on the MCP endpoint.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: list[str],
        origins: list[str],
        exempt: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.exempt = frozenset(exempt)
        self.security = TransportSecurityMiddleware(
            TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=hosts,
                allowed_origins=origins,
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") not in self.exempt:
            refused = await self.security.validate_request(Request(scope))
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)
