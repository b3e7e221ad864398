"""The MCP server over one service: its tools, resources, background work and
transports.

Commands go to `service.ledger`, queries to `service.read_models` (which catch
up with the log first, so a query sees every write acknowledged before it).
Domain errors become `ToolError`s whose text names the problem; a request that
does not fit is not an error but a result with status "failed".
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from allocation_ledger.adapters.http.auth import (
    ANONYMOUS_ACTOR,
    LOCAL_ACTOR,
    Access,
    StaticTokenVerifier,
)
from allocation_ledger.adapters.mcp.background import BackgroundWork
from allocation_ledger.adapters.mcp.resources import register_resources
from allocation_ledger.adapters.mcp.tools.allocations import AllocationTools
from allocation_ledger.adapters.mcp.tools.audit import AuditTools
from allocation_ledger.adapters.mcp.tools.capacity import CapacityTools
from allocation_ledger.adapters.mcp.tools.mcp_servers import McpServerTools
from allocation_ledger.adapters.mcp.tools.scheduling import SchedulingTools
from allocation_ledger.adapters.mcp.tools.specs import served_tools
from allocation_ledger.adapters.storage.service import AllocationService

logger = logging.getLogger("allocation_ledger.mcp")

SERVER_NAME = "allocation-ledger"
HEALTH_PATH = "/healthz"

INSTRUCTIONS = """\
Allocation Ledger reserves workers (CPU and memory) and shared MCP servers for
jobs. Call request_resources before work starts, keep the returned
allocation_id, renew_allocation while the job runs past its ttl_seconds, and
release_resources when done; whatever is not renewed expires and its capacity
is taken back. A request that does not fit comes back with status "failed"
and the reason; check get_capacity first to avoid that, or pass wait=true to
queue (status "queued") until room frees; get_queue shows who waits. Higher
priorities may preempt lower ones (pass preempt=false to never do that). Pass
a request_id to make retries safe. CPU is in cores, memory in MB, times in
ISO 8601 (UTC).
"""


def build_server(
    service: AllocationService,
    *,
    access: Access | None = None,
    verifier: StaticTokenVerifier | None = None,
) -> MCPServer[BackgroundWork]:
    """The MCP server over one service.

    With a `verifier`, HTTP requests need a valid bearer token (401 without
    one) and tools check the token's scopes. Without, every call is allowed
    and recorded as `access.anonymous_actor` ("local" by default).
    """
    if access is None:
        access = Access(require_token=verifier is not None)
    allocations = AllocationTools(service, access)
    capacity = CapacityTools(service, access)
    audit = AuditTools(service, access)
    groups = (
        allocations,
        capacity,
        SchedulingTools(service, access),
        audit,
        McpServerTools(service, access),
    )

    @asynccontextmanager
    async def lifespan(_: MCPServer[BackgroundWork]) -> AsyncIterator[BackgroundWork]:
        async with BackgroundWork(service).running() as work:
            yield work

    auth = None
    if verifier is not None:
        auth = AuthSettings(
            issuer_url=AnyHttpUrl("http://127.0.0.1"),
            resource_server_url=None,
            required_scopes=[],
        )
    server: MCPServer[BackgroundWork] = MCPServer(
        SERVER_NAME,
        title="Allocation Ledger",
        instructions=INSTRUCTIONS,
        version=_version(),
        tools=served_tools(groups),
        lifespan=lifespan,
        auth=auth,
        token_verifier=verifier,
        log_level=service.settings.log_level,
    )
    register_resources(
        server,
        access,
        capacity=capacity.capacity,
        detail=allocations.detail,
        history=audit.history,
    )

    async def healthz(_: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(service.projector.log.max_notification_id)
        except Exception:
            logger.exception("health check could not reach the event store")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)(healthz)
    return server


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("allocation-ledger")
    except PackageNotFoundError:
        return "0"


def stdio_server(service: AllocationService) -> MCPServer[BackgroundWork]:
    """The server for stdio: one local user, recorded as `local`."""
    return build_server(
        service, access=Access(require_token=False, anonymous_actor=LOCAL_ACTOR)
    )


def http_app(
    service: AllocationService,
    *,
    host: str = "127.0.0.1",
    path: str = "/mcp",
    verifier: StaticTokenVerifier | None,
    stateless: bool = False,
) -> Starlette:
    """The streamable HTTP app, with `/healthz`; no verifier means no auth.

    `stateless` keeps no MCP session in the process, so a load balancer may
    send each request to any of several servers.
    """
    access = Access(
        require_token=verifier is not None,
        anonymous_actor=ANONYMOUS_ACTOR,
    )
    server = build_server(service, access=access, verifier=verifier)
    return server.streamable_http_app(
        streamable_http_path=path, host=host, stateless_http=stateless
    )


async def serve_http(
    app: Starlette,
    *,
    host: str,
    port: int,
    log_level: str,
    sock: socket.socket | None = None,
) -> None:
    """Serve `app` with uvicorn until interrupted; uvicorn logs to stderr.

    `sock`: a socket already listening on host:port (adapters/http/listener.py)
    to serve on, instead of binding one.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,
        lifespan="on",
    )
    await uvicorn.Server(config).serve(sockets=None if sock is None else [sock])
