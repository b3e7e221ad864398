"""Serving the metrics: `/metrics` on the HTTP server, and a listener of its
own (`serve --metrics-port`) for servers that speak MCP over stdio.

On the HTTP server, `/metrics` asks for what the MCP endpoint asks for: when
the server checks bearer tokens, a scrape must bring one (any configured
token will do: every token has the read scope; give Prometheus a read-only
one). The check is the verifier's hash comparison, made before anything is
read. The listener of its own has no authentication: bind it where only
Prometheus reaches it (127.0.0.1 by default).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio.to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from prometheus_client import start_http_server
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

METRICS_PATH = "/metrics"


def metrics_endpoint(
    registry: CollectorRegistry, *, require_token: bool
) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint serving `registry` in the format the scraper
    accepts (Prometheus text, or OpenMetrics); 401 without a valid bearer
    token when `require_token`."""

    async def metrics(request: Request) -> Response:
        token = get_access_token()
        if require_token and (token is None or "read" not in token.scopes):
            return PlainTextResponse(
                "reading /metrics needs a bearer token (any token with the "
                "'read' scope)\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await anyio.to_thread.run_sync(encode, registry)
        return Response(body, headers={"Content-Type": content_type})

    return metrics


@contextmanager
def metrics_listener(
    registry: CollectorRegistry, *, host: str, port: int
) -> Iterator[str]:
    """Serve `registry` at http://host:port/metrics in a thread of its own
    while the context is open; yields that URL.

    Raises OSError (e.g. the port is in use) before serving anything.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    try:
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{server.server_port}{METRICS_PATH}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
