"""The MCP server over one service: its tools, resources, prompts, background
work, metrics and transports.

Commands go to `service.ledger`, queries to `service.read_models` (which catch
up with the log first, so a query sees every write acknowledged before it).
Domain errors become `ToolError`s whose text names the problem; a request that
does not fit is not an error but a result with status "failed".
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from allocation_ledger.adapters.config.settings import (
    DEFAULT_SESSION_IDLE_SECONDS,
    DEFAULT_SESSIONS_PER_TOKEN,
)
from allocation_ledger.adapters.http.auth import (
    ANONYMOUS_ACTOR,
    LOCAL_ACTOR,
    Access,
    StaticTokenVerifier,
)
from allocation_ledger.adapters.http.host_check import HostCheck
from allocation_ledger.adapters.http.hosts import host_patterns, origin_patterns
from allocation_ledger.adapters.http.sessions import SessionLimit
from allocation_ledger.adapters.mcp.background import BackgroundWork
from allocation_ledger.adapters.mcp.change_feed import ChangeFeed
from allocation_ledger.adapters.mcp.ledger_server import LedgerServer
from allocation_ledger.adapters.mcp.prompts import register_prompts
from allocation_ledger.adapters.mcp.resource_updates import ResourceUpdates
from allocation_ledger.adapters.mcp.resources import (
    ResourceListing,
    pool_names,
    register_resources,
)
from allocation_ledger.adapters.mcp.subscriptions import register_subscriptions
from allocation_ledger.adapters.mcp.tools.allocations import AllocationTools
from allocation_ledger.adapters.mcp.tools.audit import AuditTools
from allocation_ledger.adapters.mcp.tools.capacity import CapacityTools
from allocation_ledger.adapters.mcp.tools.mcp_servers import McpServerTools
from allocation_ledger.adapters.mcp.tools.scheduling import SchedulingTools
from allocation_ledger.adapters.mcp.tools.server_status import ServerStatuses
from allocation_ledger.adapters.mcp.tools.specs import TOOLS, served_tools
from allocation_ledger.adapters.metrics.exposition import (
    METRICS_PATH,
    metrics_endpoint,
)
from allocation_ledger.adapters.metrics.instruments import LedgerMetrics
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.adapters.storage.store_health import StoreProbe, StoreState
from allocation_ledger.projections.changes import ChangeFollower

logger = logging.getLogger("allocation_ledger.mcp")

SERVER_NAME = "allocation-ledger"
HEALTH_PATH = "/healthz"
SHUTDOWN_GRACE_SECONDS = 5
"""Seconds a stopping HTTP server gives open requests to finish: a call
waiting in the queue (`block_seconds`) or a `subscriptions/listen` stream
would otherwise hold the stop for as long as it lasts. Past it they are cut
(a waiting request stays queued; a listener listens again)."""
HEALTH_DEADLINE = 1.5
"""Seconds /healthz takes at most to answer (checkers give up after 2 s)."""

INSTRUCTIONS = """\
Allocation Ledger reserves workers (CPU and memory) and shared MCP servers for
jobs. Call request_resources before work starts, keep the returned
allocation_id, renew_allocation while the job runs past its ttl_seconds, and
release_resources when done; whatever is not renewed expires and its capacity
is taken back. A request that does not fit comes back with status "failed"
and the reason; check get_capacity first to avoid that, or pass wait=true to
queue (status "queued") until room frees, with block_seconds to have the call
itself answer once granted (await_allocation waits again); get_queue shows
who waits. Subscribe to ledger://allocations/{allocation_id} to be told of
its changes and before its lease ends. Higher
priorities may preempt lower ones (pass preempt=false to never do that). Pass
a request_id to make retries safe. CPU is in cores, memory in MB, times in
ISO 8601 (UTC).
"""


def build_server(
    service: AllocationService,
    *,
    access: Access | None = None,
    verifier: StaticTokenVerifier | None = None,
    metrics: LedgerMetrics | None = None,
) -> MCPServer[BackgroundWork]:
    """The MCP server over one service.

    With a `verifier`, HTTP requests need a valid bearer token (401 without
    one) and tools check the token's scopes. Without, every call is allowed
    and recorded as `access.anonymous_actor` ("local" by default). Its
    work is counted in `metrics` (new ones if not given), served at
    /metrics over HTTP (with a token when `access` requires one).
    """
    if access is None:
        access = Access(require_token=verifier is not None)
    if metrics is None:
        metrics = LedgerMetrics(service, TOOLS)
    changes = change_feed(service)
    allocations = AllocationTools(service, access, changes)
    capacity = CapacityTools(service, access)
    audit = AuditTools(service, access)
    groups = (
        allocations,
        capacity,
        SchedulingTools(service, access),
        audit,
        McpServerTools(service, access),
        allocations.waits,
    )

    updates = resource_updates(service)
    updates.follow(changes)

    @asynccontextmanager
    async def lifespan(_: MCPServer[BackgroundWork]) -> AsyncIterator[BackgroundWork]:
        async with (
            BackgroundWork(service, metrics, changes).running() as work,
            updates.running(),
        ):
            yield work

    auth = None
    if verifier is not None:
        auth = AuthSettings(
            issuer_url=AnyHttpUrl("http://127.0.0.1"),
            resource_server_url=None,
            required_scopes=[],
        )
    server = LedgerServer(
        SERVER_NAME,
        title="Allocation Ledger",
        instructions=INSTRUCTIONS,
        version=_version(),
        tools=served_tools(groups),
        lifespan=lifespan,
        auth=auth,
        token_verifier=verifier,
        log_level=service.settings.log_level,
        metrics=metrics,
        changes=changes,
        subscriptions=False,  # served by register_subscriptions, tenant-bound
        list_concrete=ResourceListing(
            access,
            pools=lambda: pool_names(service.read_models),
            list_allocations=allocations.list_allocations,
        ),
    )
    register_resources(
        server,
        access,
        capacity=capacity.capacity,
        detail=allocations.detail,
        history=audit.history,
    )
    register_subscriptions(server, access, updates)
    register_prompts(
        server,
        access,
        service.settings.catalog,
        capacity=capacity.capacity,
        detail=allocations.detail,
    )

    health = HealthCheck(service.probe)

    async def healthz(_: Request) -> Response:
        state = await health.state()
        return JSONResponse(state.as_json(), status_code=200 if state.ok else 503)

    server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)(healthz)
    server.custom_route(METRICS_PATH, methods=["GET"], include_in_schema=False)(
        metrics_endpoint(metrics.registry, require_token=access.require_token)
    )
    return server


def change_feed(service: AllocationService) -> ChangeFeed:
    """The feed of the ledger's changes a server's waiters listen to,
    following the service's event log (change_feed.py); a changed MCP
    server comes with what get_mcp_status says of it now."""
    projector = service.projector
    follower = ChangeFollower(
        projector.log,
        service.store,
        lambda position: projector.catch_up(until=position),
        server_names=service.settings.catalog.mcp_servers,
        server_status=ServerStatuses(service).now,
    )
    return ChangeFeed(follower)


def resource_updates(service: AllocationService) -> ResourceUpdates:
    """Who is told of which resource's changes (resource_updates.py), on
    the ledger's clock, with the configured lease warning."""
    return ResourceUpdates(
        service.read_models,
        service.ledger.clock,
        lease_warning_seconds=service.settings.lease_warning_seconds,
    )


class HealthCheck:
    """/healthz: the store checked from scratch, answered within
    HEALTH_DEADLINE seconds whatever happens.

    Checks run in threads of their own (at most two at once), not in the
    pool the tools share, which commands waiting out an outage may fill. A
    check still running at the deadline is left to finish on its own and
    the answer says the store did not answer in time.
    """

    def __init__(self, probe: StoreProbe) -> None:
        self.probe = probe
        self.limiter = anyio.CapacityLimiter(2)

    async def state(self) -> StoreState:
        with anyio.move_on_after(HEALTH_DEADLINE):
            return await anyio.to_thread.run_sync(
                self.probe.check, limiter=self.limiter, abandon_on_cancel=True
            )
        return StoreState(
            self.probe.settings.store,
            f"the ledger's database did not answer within {HEALTH_DEADLINE:g} s",
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("allocation-ledger")
    except PackageNotFoundError:
        return "0"


def stdio_server(
    service: AllocationService, *, metrics: LedgerMetrics | None = None
) -> MCPServer[BackgroundWork]:
    """The server for stdio: one local user, recorded as `local`."""
    return build_server(
        service,
        access=Access(require_token=False, anonymous_actor=LOCAL_ACTOR),
        metrics=metrics,
    )


def http_app(
    service: AllocationService,
    *,
    host: str = "127.0.0.1",
    path: str = "/mcp",
    verifier: StaticTokenVerifier | None,
    stateless: bool = False,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    sessions_per_token: int = DEFAULT_SESSIONS_PER_TOKEN,
    session_idle_seconds: float = DEFAULT_SESSION_IDLE_SECONDS,
    metrics: LedgerMetrics | None = None,
) -> ASGIApp:
    """The streamable HTTP app, with `/healthz` and `/metrics`; no verifier
    means no auth.

    `stateless` keeps no MCP session in the process, so a load balancer may
    send each request to any of several servers. Requests to the MCP
    endpoint must name the loopback, `host` (the bind address) or one of
    `allowed_hosts` in their Host header (421 otherwise) and, when they
    carry an Origin, come from one of those or `allowed_origins` (403):
    see `adapters.http.hosts`; every other path but /healthz is checked the
    same way, first. Each token may hold `sessions_per_token`
    sessions open (429 past it); a session idle for `session_idle_seconds`
    is closed (`adapters.http.sessions`).
    """
    access = Access(
        require_token=verifier is not None,
        anonymous_actor=ANONYMOUS_ACTOR,
    )
    server = build_server(service, access=access, verifier=verifier, metrics=metrics)
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=host_patterns(host, allowed_hosts),
        allowed_origins=origin_patterns(host, allowed_origins),
    )
    app: ASGIApp = server.streamable_http_app(
        streamable_http_path=path,
        host=host,
        stateless_http=stateless,
        transport_security=security,
        session_idle_timeout=session_idle_seconds,
    )
    if not stateless:
        app = SessionLimit(
            app,
            path=path,
            limit=sessions_per_token,
            idle_seconds=session_idle_seconds,
            subjects=verifier,
        )
    return HostCheck(
        app,
        hosts=security.allowed_hosts,
        origins=security.allowed_origins,
        exempt=(HEALTH_PATH,),
    )


async def serve_http(
    app: ASGIApp,
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
        timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS,
    )
    await uvicorn.Server(config).serve(sockets=None if sock is None else [sock])
