"""The MCP server: the ledger's tools and resources, its background work, transports.

Commands go to `service.ledger`, queries to `service.read_models` (which catch
up with the log first, so a query sees every write acknowledged before it).
Domain errors become `ToolError`s whose text names the problem; a request that
does not fit is not an error but a result with status "failed".
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import (
    ResourceError,
    ResourceNotFoundError,
    ToolError,
)
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import AnyHttpUrl, BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from allocation_ledger.adapters import audit
from allocation_ledger.adapters.auth import (
    ANONYMOUS_ACTOR,
    LOCAL_ACTOR,
    Access,
    Scope,
    StaticTokenVerifier,
)
from allocation_ledger.adapters.mcp_models import (
    UNLIMITED,
    AfterArg,
    AgingSecondsArg,
    AllocationDetail,
    AllocationIdArg,
    AllocationList,
    AtArg,
    CapacityCpuArg,
    CapacityMemoryArg,
    CapacityPoolArg,
    CapacityResult,
    CapacityWorkersArg,
    CleanupResult,
    ClearArg,
    DryRunArg,
    HistoryResult,
    JobIdArg,
    JobIdFilterArg,
    LimitArg,
    MaxWaitArg,
    McpServersArg,
    MetadataArg,
    PoolArg,
    PoolFilterArg,
    PreemptArg,
    PreemptionArg,
    PriorityArg,
    PriorityFilterArg,
    QueuePolicyArg,
    QueuePoolArg,
    QueueResult,
    QuotaCpuArg,
    QuotaMemoryArg,
    QuotaResult,
    QuotaTenantArg,
    QuotaWorkersArg,
    ReleaseResourcesResult,
    RenewResult,
    RenewTtlArg,
    RequestIdArg,
    RequestResourcesResult,
    SchedulingPoolArg,
    SchedulingResult,
    SetCapacityResult,
    SinceArg,
    StateArg,
    TenantArg,
    TtlArg,
    UntilArg,
    UsageResult,
    UsageRowResult,
    WaitArg,
    WorkersArg,
    allocation_detail,
    allocation_summary,
    amounts,
    capacity_result,
    cores,
    history_result,
    millicores,
    queued_requests,
    quota_limits,
    request_result,
)
from allocation_ledger.adapters.service import AllocationService, resume_interrupted
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid, is_allocation_id
from allocation_ledger.domain.errors import (
    AllocationNotFoundError,
    LedgerError,
    PoolNotFoundError,
)
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.pool_settings import DEFAULT_WORKER_SIZE
from allocation_ledger.domain.results import RequestResult
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Priority,
    QueuePolicy,
    Rejection,
    Resources,
)
from allocation_ledger.projections.store import MAX_PAGE_SIZE, ListingQuery
from allocation_ledger.projections.usage import UsageQuery
from allocation_ledger.projections.views import CapacityView

logger = logging.getLogger("allocation_ledger.mcp")

SERVER_NAME = "allocation-ledger"
HEALTH_PATH = "/healthz"
T = TypeVar("T")


@dataclass(frozen=True)
class ToolSpec:
    """How a tool presents itself, and the scope it needs."""

    title: str
    scope: Scope
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = True

    @property
    def annotations(self) -> ToolAnnotations:
        return ToolAnnotations(
            title=self.title,
            read_only_hint=self.read_only,
            destructive_hint=self.destructive,
            idempotent_hint=self.idempotent,
            open_world_hint=False,
        )


TOOLS: dict[str, ToolSpec] = {
    "request_resources": ToolSpec("Request resources", "write", idempotent=False),
    "release_resources": ToolSpec("Release resources", "write", destructive=True),
    "get_capacity": ToolSpec("Get capacity", "read", read_only=True),
    "get_allocation": ToolSpec("Get allocation", "read", read_only=True),
    "list_allocations": ToolSpec("List allocations", "read", read_only=True),
    "cleanup_expired": ToolSpec(
        "Clean up expired allocations", "write", destructive=True
    ),
    "renew_allocation": ToolSpec("Renew allocation", "write", idempotent=False),
    "get_allocation_history": ToolSpec(
        "Get allocation history", "read", read_only=True
    ),
    "set_capacity": ToolSpec("Set pool capacity", "admin", destructive=True),
    "get_usage": ToolSpec("Get usage", "read", read_only=True),
    "get_queue": ToolSpec("Get queue", "read", read_only=True),
    "set_quota": ToolSpec("Set tenant quota", "admin", destructive=True),
    "set_scheduling": ToolSpec("Set pool scheduling", "admin", destructive=True),
}
"""Every tool. Scopes: admin includes write, write includes read. Releasing,
cleaning up and setting capacity, quotas or scheduling take capacity from
someone or overwrite settings (destructive); requesting and renewing do
something new on every call."""

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


def _strict_tool(fn: Callable[..., Any], spec: ToolSpec) -> Tool:
    """A tool whose arguments must all be known: a misspelt one is an error.

    MCPServer ignores unknown arguments by default, which would turn a typo
    such as `worker=4` into a silent request for no workers.
    """
    tool = Tool.from_function(
        fn,
        description=inspect.cleandoc(fn.__doc__ or ""),
        annotations=spec.annotations,
        title=spec.title,
    )
    model = tool.fn_metadata.arg_model
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    tool.parameters = model.model_json_schema(by_alias=True)
    return tool


class LedgerTools:
    """The tools, as methods over one service, with one access policy."""

    def __init__(self, service: AllocationService, access: Access) -> None:
        self.service = service
        self.ledger = service.ledger
        self.read = service.read_models
        self.access = access

    # -- plumbing ------------------------------------------------------------------

    async def _call(self, work: Callable[[], T]) -> T:
        """Run ledger work off the event loop; domain errors become ToolErrors."""
        try:
            return await anyio.to_thread.run_sync(work)
        except LedgerError as error:
            raise ToolError(str(error)) from error

    def _actor(self, tool: str) -> str:
        return self.access.actor(TOOLS[tool].scope, tool)

    def _capacity_view(self, pool: str, *, caught_up: bool = False) -> CapacityView:
        """A pool's capacity; `caught_up` skips catching up (just done)."""
        view = self.read.store.get_capacity(pool) if caught_up else None
        if view is None:
            view = self.read.capacity(pool)
        if view is None:
            raise PoolNotFoundError(pool)
        return view

    def _worker_size(self, pool: str, *, caught_up: bool = False) -> Resources:
        try:
            return self._capacity_view(pool, caught_up=caught_up).worker_size
        except PoolNotFoundError:
            return DEFAULT_WORKER_SIZE

    def _tenant(self, tool: str, requested: str | None) -> str | None:
        """Whose quota a call counts in: the caller's own identity by default.

        Over HTTP with a token that is its subject, and naming another tenant
        needs the admin scope. Without a token (stdio, --no-auth) there is no
        tenant unless one is given, and any may be given.
        """
        token = get_access_token()
        own = None if token is None else (token.subject or token.client_id)
        if requested is None or requested == own or token is None:
            return own if requested is None else requested
        if "admin" not in token.scopes:
            msg = (
                f"{tool} for tenant {requested!r} needs the 'admin' scope; the "
                f"token of {own!r} may only request as itself"
            )
            raise ToolError(msg)
        return requested

    def _waiting_for(self, result: RequestResult) -> Rejection | None:
        """What a queued request waits for: recorded with it, or (dry run)
        what the pool would make it wait for now."""
        allocation = result.allocation
        if allocation.state is not AllocationState.QUEUED:
            return None
        if result.dry_run:
            with suppress(PoolNotFoundError):
                pool = self.ledger.pool(allocation.pool)
                now = self.ledger.clock.now()
                return pool.shortfall(allocation.request) or pool.waiting_ahead(
                    allocation.request, now
                )
            return None
        store = self.ledger.repository.event_store
        waiting = None
        for event in store.get(allocation_uuid(allocation.allocation_id)):
            if isinstance(event, Allocation.Queued):
                waiting = Rejection.from_dict(event.reason)
        return waiting

    def _queue_position(self, result: RequestResult) -> int | None:
        allocation = result.allocation
        if result.dry_run or allocation.state is not AllocationState.QUEUED:
            return None
        view = self._capacity_view(allocation.pool)
        for entry in queued_requests(view, self.ledger.clock.now()):
            if entry.allocation_id == allocation.allocation_id:
                return entry.position
        return None

    # -- commands ------------------------------------------------------------------

    async def request_resources(
        self,
        *,
        job_id: JobIdArg,
        mcp_servers: McpServersArg,
        workers: WorkersArg = 0,
        priority: PriorityArg = "normal",
        ttl_seconds: TtlArg = 3600,
        metadata: MetadataArg = None,
        request_id: RequestIdArg = None,
        pool: PoolArg = DEFAULT_POOL,
        dry_run: DryRunArg = False,
        wait: WaitArg = False,
        max_wait_seconds: MaxWaitArg = None,
        preempt: PreemptArg = True,
        tenant: TenantArg = None,
    ) -> RequestResourcesResult:
        """Reserve workers and MCP servers for a job and get their endpoints.

        Each worker costs 1 CPU core and 2048 MB unless the pool says otherwise;
        MCP servers are shared by name across allocations. On success, status is
        "active" and the result lists the endpoints; the lease runs for
        ttl_seconds from now (renew_allocation extends it; release_resources
        ends it). If the request does not fit, nothing is reserved and the
        result is NOT an error: status is "failed", `error` says e.g.
        "Insufficient workers: requested 10, available 6", and `reason` gives
        {code, dimension, requested, available}; the refusal is recorded. Before
        refusing, allocations whose lease has already run out are expired to
        make room.

        Scheduling: a request that does not fit may preempt live allocations
        of strictly lower priority where the pool allows it (by default
        critical preempts low and normal, high preempts low; the smallest set,
        lowest priority and youngest first); they end in state "preempted" and
        `preempted` lists their ids. preempt=false never does that. With
        wait=true a request that still does not fit is NOT refused: status is
        "queued", it holds nothing, `waiting_for` says what it waits for,
        `queue_position` its place (get_queue shows the queue), and it is
        granted (becomes active) as soon as room frees, in priority order.
        With max_wait_seconds it fails with reason code "queue_timeout" if not
        granted in time; release_resources cancels it. Under the pool's strict
        queue policy a new request does not pass requests queued ahead of it
        (code "queued_ahead"). A request bigger than the whole pool is refused,
        never queued. A tenant (by default the caller's token subject) over its
        quota in the pool is refused with code "quota_exceeded", wait or not.
        dry_run=true reserves nothing and reports what would happen, including
        who would be preempted.

        Retries: with the same request_id and the same arguments
        you get the original allocation back (replayed: true) and nothing
        changes; reusing a request_id with different arguments is an error.
        Invalid arguments (bad names, out-of-range numbers, unknown pool) are
        errors and reserve nothing.
        """
        actor = self._actor("request_resources")
        tenant = self._tenant("request_resources", tenant)

        def work() -> RequestResourcesResult:
            request = AllocationRequest(
                job_id=job_id,
                servers=tuple(mcp_servers),
                workers=workers,
                priority=Priority(priority),
                ttl_seconds=ttl_seconds,
                metadata=metadata if metadata is not None else {},
            )
            result = self.ledger.request(
                request,
                pool=pool,
                request_id=request_id,
                dry_run=dry_run,
                actor=actor,
                wait=wait,
                max_wait_seconds=max_wait_seconds,
                preempt=preempt,
                tenant=tenant,
            )
            return request_result(
                result.allocation,
                worker_size=self._worker_size(result.allocation.pool),
                replayed=result.replayed,
                dry_run=result.dry_run,
                expired_first=result.expired_first,
                preempted=result.preempted,
                waiting_for=self._waiting_for(result),
                queue_position=self._queue_position(result),
            )

        return await self._call(work)

    async def release_resources(
        self, allocation_id: AllocationIdArg
    ) -> ReleaseResourcesResult:
        """Release an allocation: its workers, CPU and memory go back to the pool.

        MCP servers it used stay up while other allocations use them; a server
        nobody uses becomes idle and stops after the pool's idle timeout,
        freeing its port. What is freed goes at once to requests waiting in
        the pool's queue, in the same transaction. Releasing a queued request
        cancels it (status "released"; it held nothing). Safe to repeat:
        releasing an allocation that was already released, has expired or was
        preempted changes nothing and returns status "already_released";
        releasing one that failed changes nothing and returns status
        "failed". An unknown allocation_id is an error.
        """
        actor = self._actor("release_resources")

        def work() -> ReleaseResourcesResult:
            outcome = self.ledger.release(allocation_id, actor=actor)
            result, allocation = outcome.result, outcome.allocation
            message = None
            if result.status == "already_released":
                message = (
                    f"allocation {allocation_id} was already {allocation.state.value};"
                    " nothing changed"
                )
            elif result.status == "failed":
                message = (
                    f"allocation {allocation_id} had failed and held nothing; "
                    "nothing changed"
                )
            return ReleaseResourcesResult(
                status=result.status,
                allocation_id=allocation_id,
                job_id=allocation.request.job_id,
                state=allocation.state.value,
                workers_released=result.freed.workers,
                cpu_freed=cores(result.freed.cpu_millicores),
                memory_freed=result.freed.memory_mib,
                released_at=result.released_at,
                duration_seconds=result.duration_seconds,
                message=message,
            )

        return await self._call(work)

    async def renew_allocation(
        self, allocation_id: AllocationIdArg, ttl_seconds: RenewTtlArg = None
    ) -> RenewResult:
        """Extend an active allocation's lease to now + ttl_seconds.

        Without ttl_seconds, the allocation's own ttl_seconds is used again.
        Call it while the job still needs its resources, before expires_at.
        Errors: an unknown allocation_id; an allocation that is no longer live
        (released, expired or failed); one whose lease has already run out,
        which is expired instead of renewed (request new resources then). Each
        call moves the expiry again, from the time of that call.
        """
        actor = self._actor("renew_allocation")

        def work() -> RenewResult:
            allocation = self.ledger.renew(allocation_id, ttl_seconds, actor=actor)
            renewed = allocation.allocation
            assert renewed.expires_at is not None
            return RenewResult(
                allocation_id=allocation_id,
                status="renewed",
                job_id=renewed.request.job_id,
                state=renewed.state.value,
                ttl_seconds=(
                    renewed.request.ttl_seconds if ttl_seconds is None else ttl_seconds
                ),
                expires_at=renewed.expires_at,
                renewed_at=renewed.modified_on,
                renewals=renewed.renewals,
            )

        return await self._call(work)

    async def cleanup_expired(self) -> CleanupResult:
        """Expire every allocation whose lease has run out, now.

        The server also does this on its own every few minutes; call it to
        settle things at once. Expired allocations give their capacity back,
        which goes to queued requests at once; queued requests whose
        max_wait_seconds has passed fail (reason code "queue_timeout").
        Returns the ids expired (`cleaned_up`) and their `count`; calling it
        again right away finds nothing more.
        """
        actor = self._actor("cleanup_expired")

        def work() -> CleanupResult:
            result = self.ledger.expire_due(actor=actor)
            return CleanupResult(
                cleaned_up=list(result.expired),
                count=len(result.expired),
                deprovision_errors=list(result.deprovision_errors),
            )

        return await self._call(work)

    async def set_capacity(
        self,
        *,
        cpu: CapacityCpuArg = None,
        memory: CapacityMemoryArg = None,
        workers: CapacityWorkersArg = None,
        pool: CapacityPoolArg = DEFAULT_POOL,
    ) -> SetCapacityResult:
        """Set a pool's total CPU, memory and worker slots (needs the admin scope).

        Give any of cpu (cores), memory (MB) and workers; the others keep their
        current totals. Lowering capacity below what is allocated never evicts
        anything: it only refuses new requests until enough is released
        (available_* may be negative meanwhile). Setting the totals a pool
        already has changes nothing (changed: false). Returns the pool's
        capacity afterwards.
        """
        actor = self._actor("set_capacity")
        if cpu is None and memory is None and workers is None:
            msg = "set_capacity needs at least one of cpu, memory and workers"
            raise ToolError(msg)

        def work() -> SetCapacityResult:
            total = self._capacity_view(pool).total
            capacity = Resources(
                total.cpu_millicores if cpu is None else millicores(cpu),
                total.memory_mib if memory is None else memory,
                total.workers if workers is None else workers,
            )
            result = self.ledger.set_capacity(capacity, pool=pool, actor=actor)
            view = capacity_result(self._capacity_view(pool))
            return SetCapacityResult(**dict(view), changed=result.position is not None)

        return await self._call(work)

    async def set_quota(
        self,
        *,
        tenant: QuotaTenantArg,
        cpu: QuotaCpuArg = None,
        memory: QuotaMemoryArg = None,
        workers: QuotaWorkersArg = None,
        pool: SchedulingPoolArg = DEFAULT_POOL,
        clear: ClearArg = False,
    ) -> QuotaResult:
        """Limit what a tenant may hold at once in a pool (needs the admin scope).

        A tenant is whoever a request counts for: by default the caller's
        token subject. Give any of cpu (cores), memory (MB) and workers; the
        others keep their current limit, or have none if the tenant had no
        quota. clear=true removes the quota. A request that would take the
        tenant past a limit is refused with reason code "quota_exceeded"
        (waiting does not help: it is not queued). Lowering a quota below what
        the tenant holds evicts nothing; it only refuses its new requests.
        Setting the quota it already has changes nothing (changed: false).
        Returns the tenant's quota and what it holds, and every quota of the
        pool.
        """
        actor = self._actor("set_quota")
        given = cpu is not None or memory is not None or workers is not None
        if clear and given:
            msg = "set_quota takes either clear=true or limits, not both"
            raise ToolError(msg)
        if not clear and not given:
            msg = "set_quota needs at least one of cpu, memory and workers, or clear"
            raise ToolError(msg)

        def work() -> QuotaResult:
            limits: Resources | None = None
            if not clear:
                current = self._capacity_view(pool).quotas.get(tenant, UNLIMITED)
                limits = Resources(
                    current.cpu_millicores if cpu is None else millicores(cpu),
                    current.memory_mib if memory is None else memory,
                    current.workers if workers is None else workers,
                )
            result = self.ledger.set_quota(tenant, limits, pool=pool, actor=actor)
            view = self._capacity_view(pool)
            quota = view.quotas.get(tenant)
            return QuotaResult(
                pool=pool,
                tenant=tenant,
                quota=None if quota is None else quota_limits(quota),
                held=amounts(view.held_by_tenant.get(tenant, Resources())),
                changed=result.position is not None,
                quotas={t: quota_limits(q) for t, q in sorted(view.quotas.items())},
                held_by_tenant={
                    t: amounts(h) for t, h in sorted(view.held_by_tenant.items())
                },
            )

        return await self._call(work)

    async def set_scheduling(
        self,
        *,
        pool: SchedulingPoolArg = DEFAULT_POOL,
        queue_policy: QueuePolicyArg = None,
        aging_seconds: AgingSecondsArg = None,
        preemption: PreemptionArg = None,
    ) -> SchedulingResult:
        """Set how a pool queues and preempts (needs the admin scope).

        queue_policy: "strict" (the default: when the request at the head of
        the queue does not fit, nobody passes it, so no request starves) or
        "backfill" (smaller requests behind it are granted if they fit, which
        uses the pool better but can keep a big request waiting).
        aging_seconds: a waiting request counts one priority higher per this
        many seconds waited, up to critical (default 600). preemption: which
        priorities each priority may preempt, always strictly lower ones,
        e.g. {"critical": ["low", "normal"], "high": ["low"]} (the default);
        {} turns preemption off; it replaces all the rules. Omitted settings
        are kept. Setting what the pool already has changes nothing (changed:
        false). A change that lets waiting requests in grants them at once.
        Returns the pool's scheduling afterwards.
        """
        actor = self._actor("set_scheduling")
        if queue_policy is None and aging_seconds is None and preemption is None:
            msg = (
                "set_scheduling needs at least one of queue_policy, aging_seconds "
                "and preemption"
            )
            raise ToolError(msg)

        def work() -> SchedulingResult:
            view = self._capacity_view(pool)
            scheduling = Scheduling(
                queue_policy=QueuePolicy(queue_policy or view.queue_policy),
                aging_seconds=(
                    view.aging_seconds if aging_seconds is None else aging_seconds
                ),
                preemption={
                    by: tuple(victims)
                    for by, victims in (
                        view.preemption if preemption is None else preemption
                    ).items()
                },
            )
            result = self.ledger.configure_scheduling(
                scheduling, pool=pool, actor=actor
            )
            after = self._capacity_view(pool)
            return SchedulingResult(
                pool=pool,
                queue_policy=QueuePolicy(after.queue_policy).value,
                aging_seconds=after.aging_seconds,
                preemption={k: list(v) for k, v in sorted(after.preemption.items())},
                queue_length=len(after.queue),
                changed=result.position is not None,
            )

        return await self._call(work)

    # -- queries -------------------------------------------------------------------

    async def get_capacity(
        self, pool: CapacityPoolArg = DEFAULT_POOL, at: AtArg = None
    ) -> CapacityResult:
        """Show a pool's capacity: totals, allocated, available, MCP servers.

        CPU in cores, memory in MB. available_* is total minus allocated (it
        can be negative after capacity was lowered below what is held).
        running_mcp_servers names the servers up (running or idle);
        mcp_servers gives each one's port, status and users. Scheduling:
        queue_length (requests waiting; get_queue lists them), queue_policy,
        aging_seconds, preemption rules, each tenant's quotas and what each
        tenant holds (held_by_tenant). With `at`, the
        pool as it was at that past moment, replayed from the event log. An
        unknown pool (or one that did not exist yet at `at`) is an error.
        """
        self._actor("get_capacity")
        if at is None:
            return await self._call(lambda: self.capacity(pool))
        moment = _utc(at)
        return await self._call(
            lambda: capacity_result(
                audit.capacity_at(self.service, moment, pool).capacity
            )
        )

    def capacity(self, pool: str) -> CapacityResult:
        return capacity_result(self._capacity_view(pool))

    async def get_allocation(self, allocation_id: AllocationIdArg) -> AllocationDetail:
        """Show one allocation: state, resources, endpoints, times, lease.

        Includes what it holds, its MCP server and worker endpoints, its
        timestamps (created, activated, expires, released), whether its lease
        has run out (is_expired), its tenant and, for a refused request, the
        error and reason. A queued one (state "queued") holds nothing and
        shows queue_deadline and waiting_for; a preempted one shows
        preempted_by, the allocation that took its capacity. An unknown
        allocation_id is an error.
        """
        self._actor("get_allocation")
        return await self._call(lambda: self.detail(allocation_id))

    def detail(self, allocation_id: str) -> AllocationDetail:
        view = self.read.allocation(allocation_id)
        return allocation_detail(
            view,
            worker_size=self._worker_size(view.pool, caught_up=True),
            now=self.ledger.clock.now(),
        )

    async def list_allocations(
        self,
        *,
        state: StateArg = None,
        job_id: JobIdFilterArg = None,
        priority: PriorityFilterArg = None,
        pool: PoolFilterArg = None,
        after: AfterArg = 0,
        limit: LimitArg = MAX_PAGE_SIZE,
    ) -> Annotated[CallToolResult, AllocationList]:
        """List allocations, oldest first, optionally filtered.

        Filters: state (queued, pending, active, releasing, released, expired,
        failed, preempted), job_id, priority, pool. Each item has
        allocation_id, job_id, state, priority, workers, age_seconds and
        is_expired, plus pool, created_at, expires_at, sequence, tenant,
        queue_deadline and, when preempted, preempted_by. Returns at most
        `limit` items; for the next
        page pass the last item's sequence as `after`. The text result is the
        JSON list; the structured result is {allocations, count}.
        """
        self._actor("list_allocations")
        query = ListingQuery(
            state=None if state is None else AllocationState(state),
            job_id=job_id,
            priority=None if priority is None else Priority(priority),
            pool=pool,
            after=after,
            limit=limit,
        )

        def work() -> AllocationList:
            views = self.read.allocations(query)
            now = self.ledger.clock.now()
            items = [allocation_summary(v, now=now) for v in views]
            return AllocationList(allocations=items, count=len(items))

        listing = await self._call(work)
        structured = listing.model_dump(mode="json")
        text = json.dumps(structured["allocations"], indent=2)
        return CallToolResult(
            content=[TextContent(type="text", text=text)],
            structured_content=structured,
        )

    async def get_allocation_history(
        self, allocation_id: AllocationIdArg
    ) -> HistoryResult:
        """Every event of one allocation, in order: what happened, when, by whom.

        Each event has its version, kind (requested, queued, granted,
        rejected, activated, renewed, release_requested, released, expired,
        preempted, failed), time, actor (a token subject, "local" over stdio,
        "system:sweeper" for expiry by the server, "system:scheduler" for a
        grant or queue timeout) and what it changed. Read from the event log
        itself, so it is the audit record. An unknown allocation_id is an
        error.
        """
        self._actor("get_allocation_history")
        return await self._call(lambda: self.history(allocation_id))

    def history(self, allocation_id: str) -> HistoryResult:
        events: list[Allocation.Event] = []
        if is_allocation_id(allocation_id):
            store = self.ledger.repository.event_store
            for event in store.get(allocation_uuid(allocation_id)):
                if isinstance(event, Allocation.Event):
                    events.append(event)
        if not events:
            raise AllocationNotFoundError(allocation_id)
        return history_result(allocation_id, events)

    async def get_usage(
        self,
        *,
        job_id: JobIdFilterArg = None,
        pool: PoolFilterArg = None,
        since: SinceArg = None,
        until: UntilArg = None,
    ) -> UsageResult:
        """What each job held, per pool, over a period: the accounting.

        For each (job, pool): cpu_core_seconds, memory_mb_seconds,
        worker_seconds, mcp_server_seconds, and the allocations requested in
        the period by state. Capacity counts from the request to its release
        or failure; an expired allocation up to its lease's end; a live one up
        to now. Only the part inside [since, until) counts.
        """
        self._actor("get_usage")
        now = self.ledger.clock.now()
        query = UsageQuery(
            job_id=job_id,
            pool=pool,
            since=None if since is None else _utc(since),
            until=None if until is None else _utc(until),
        )
        if query.since and query.until and query.since >= query.until:
            msg = "since must be before until"
            raise ToolError(msg)

        def work() -> UsageResult:
            rows = audit.usage(self.service, query, now)
            return UsageResult(
                usage=[UsageRowResult.model_validate(r.as_dict()) for r in rows],
                count=len(rows),
                since=query.since,
                until=query.until or now,
            )

        return await self._call(work)

    async def get_queue(self, pool: QueuePoolArg = DEFAULT_POOL) -> QueueResult:
        """Show the requests waiting in a pool's queue, in serving order.

        Each waiting request (state "queued", holding nothing) has its
        position (1 = next), allocation_id, job_id, priority and
        effective_priority / effective_rank (its priority raised one level
        per aging_seconds waited, up to critical), what it needs (workers,
        cpu in cores, memory in MB, servers), tenant, enqueued_at,
        waited_seconds and deadline (when it fails with queue_timeout; null
        for never). The queue is served by effective rank, then arrival.
        Also the pool's queue_policy (strict: nobody passes the head;
        backfill: smaller ones may), aging_seconds, preemption rules and what
        is available now. An unknown pool is an error.
        """
        self._actor("get_queue")

        def work() -> QueueResult:
            view = self._capacity_view(pool)
            entries = queued_requests(view, self.ledger.clock.now())
            return QueueResult(
                pool=view.pool,
                queue=entries,
                count=len(entries),
                queue_policy=QueuePolicy(view.queue_policy).value,
                aging_seconds=view.aging_seconds,
                preemption={k: list(v) for k, v in sorted(view.preemption.items())},
                available=amounts(view.available),
            )

        return await self._call(work)

    # -- registration --------------------------------------------------------------

    def tools(self) -> list[Tool]:
        return [_strict_tool(getattr(self, name), spec) for name, spec in TOOLS.items()]

    # -- resources -----------------------------------------------------------------

    async def _resource(self, uri: str, work: Callable[[], BaseModel]) -> str:
        try:
            self.access.actor("read", f"reading {uri}")
        except ToolError as error:
            raise ResourceError(str(error)) from error
        try:
            model = await anyio.to_thread.run_sync(work)
        except (AllocationNotFoundError, PoolNotFoundError) as error:
            raise ResourceNotFoundError(str(error)) from error
        except LedgerError as error:
            raise ResourceError(str(error)) from error
        return model.model_dump_json(indent=2)

    def register_resources(self, server: MCPServer[Any]) -> None:
        @server.resource(
            "ledger://pools/{pool}/capacity",
            name="pool_capacity",
            title="Pool capacity",
            description="A pool's capacity as get_capacity returns it (JSON).",
            mime_type="application/json",
        )
        async def pool_capacity(pool: str) -> str:
            return await self._resource(
                f"ledger://pools/{pool}/capacity", lambda: self.capacity(pool)
            )

        @server.resource(
            "ledger://allocations/{allocation_id}",
            name="allocation",
            title="Allocation",
            description="One allocation as get_allocation returns it (JSON).",
            mime_type="application/json",
        )
        async def allocation(allocation_id: str) -> str:
            return await self._resource(
                f"ledger://allocations/{allocation_id}",
                lambda: self.detail(allocation_id),
            )

        @server.resource(
            "ledger://allocations/{allocation_id}/history",
            name="allocation_history",
            title="Allocation history",
            description=(
                "Every event of one allocation, as get_allocation_history "
                "returns it (JSON)."
            ),
            mime_type="application/json",
        )
        async def allocation_history(allocation_id: str) -> str:
            return await self._resource(
                f"ledger://allocations/{allocation_id}/history",
                lambda: self.history(allocation_id),
            )


# -- background work -----------------------------------------------------------


async def _periodically(
    name: str, interval: float, job: Callable[[], Awaitable[None]]
) -> None:
    """Run `job` now and then every `interval` seconds; errors are logged, not fatal."""
    while True:
        try:
            await job()
        except Exception:  # - logged and retried on the next round
            logger.exception("%s failed; trying again in %g s", name, interval)
        await anyio.sleep(interval)


class BackgroundWork:
    """The expiry sweeper and the idle-MCP-server stopper of one running server."""

    def __init__(self, service: AllocationService) -> None:
        self.service = service

    async def sweep(self) -> None:
        resumed = await anyio.to_thread.run_sync(resume_interrupted, self.service)
        if resumed:
            logger.warning(
                "finished %d allocation(s) left half done by an interruption: %s",
                len(resumed),
                ", ".join(resumed),
            )
        result = await anyio.to_thread.run_sync(self.service.ledger.expire_due)
        if result.expired:
            logger.info(
                "expired %d allocation(s): %s",
                len(result.expired),
                ", ".join(result.expired),
            )
        for error in result.deprovision_errors:
            logger.warning("teardown after expiry failed: %s", error)

    async def stop_idle(self) -> None:
        result = await anyio.to_thread.run_sync(self.service.ledger.stop_idle_servers)
        for server in result.stopped:
            logger.info(
                "stopped idle MCP server %s on port %d (pool %s)",
                server.name,
                server.port,
                server.pool,
            )
        for error in result.errors:
            logger.warning("stopping an idle MCP server failed: %s", error)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BackgroundWork]:
        settings = self.service.settings
        async with anyio.create_task_group() as group:
            group.start_soon(
                _periodically,
                "expiry sweep",
                settings.sweep_interval_seconds,
                self.sweep,
            )
            group.start_soon(
                _periodically,
                "idle MCP server check",
                settings.idle_check_interval_seconds,
                self.stop_idle,
            )
            try:
                yield self
            finally:
                group.cancel_scope.cancel()


# -- the server ----------------------------------------------------------------


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
    tools = LedgerTools(service, access)

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
        tools=tools.tools(),
        lifespan=lifespan,
        auth=auth,
        token_verifier=verifier,
        log_level=service.settings.log_level,
    )
    tools.register_resources(server)

    async def healthz(_: Request) -> Response:
        try:
            await anyio.to_thread.run_sync(service.projector.log.max_notification_id)
        except Exception:
            logger.exception("health check could not reach the event store")
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok"})

    server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)(healthz)
    return server


def _utc(moment: datetime) -> datetime:
    """A time as given, or taken as UTC when it has no offset."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


async def serve_http(app: Starlette, *, host: str, port: int, log_level: str) -> None:
    """Serve `app` with uvicorn until interrupted; uvicorn logs to stderr."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        log_config=None,
        lifespan="on",
    )
    await uvicorn.Server(config).serve()
