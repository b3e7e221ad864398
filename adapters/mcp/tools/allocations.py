"""The allocation tools: request, release, renew, clean up, get and list
(get and list in allocation_queries.py), and await (waiting.py)."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.http.auth import Access
from allocation_ledger.adapters.mcp.change_feed import ChangeFeed
from allocation_ledger.adapters.mcp.schemas.allocation_arguments import (
    AllocationIdArg,
    BlockSecondsArg,
    DryRunArg,
    JobIdArg,
    MaxWaitArg,
    McpServersArg,
    MetadataArg,
    PoolArg,
    PreemptArg,
    PriorityArg,
    RenewTtlArg,
    RequestIdArg,
    TenantArg,
    TtlArg,
    WaitArg,
    WorkersArg,
)
from allocation_ledger.adapters.mcp.schemas.allocation_results import (
    CleanupResult,
    ReleaseResourcesResult,
    RenewResult,
    RequestResourcesResult,
    request_result,
)
from allocation_ledger.adapters.mcp.schemas.refusals import retry_conflict_message
from allocation_ledger.adapters.mcp.schemas.scheduling import queued_requests
from allocation_ledger.adapters.mcp.schemas.units import cores, iso
from allocation_ledger.adapters.mcp.tools.allocation_queries import AllocationQueries
from allocation_ledger.adapters.mcp.tools.group import logger
from allocation_ledger.adapters.mcp.tools.outcomes import (
    release_settle,
    renew_settle,
    repeat_settle,
    request_settle,
)
from allocation_ledger.adapters.mcp.tools.servers import (
    check_servers_known,
)
from allocation_ledger.adapters.mcp.tools.waiting import AllocationWaits
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.adapters.storage.store_errors import is_store_error
from allocation_ledger.domain.errors import PoolNotFoundError, RequestIdConflictError
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.results import RequestResult
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Priority,
    Rejection,
    Resources,
)


class AllocationTools(AllocationQueries):
    """Request, release, renew and expire allocations; show and list them;
    `waits` waits for them (await_allocation, block_seconds) on `changes`."""

    def __init__(
        self, service: AllocationService, access: Access, changes: ChangeFeed
    ) -> None:
        super().__init__(service, access)
        self.waits = AllocationWaits(service, access, changes, self.detail)

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
        return allocation.waiting_for

    def _queue_position(self, result: RequestResult) -> int | None:
        """A queued request's place in the queue, read after the request was
        saved: None when that read fails (the reply still tells the truth:
        the request is queued)."""
        allocation = result.allocation
        if result.dry_run or allocation.state is not AllocationState.QUEUED:
            return None
        try:
            view = self._capacity_view(allocation.pool)
        except Exception as error:
            if not is_store_error(error):
                raise
            logger.warning(
                "queue position of %s not read: %s", allocation.allocation_id, error
            )
            return None
        for entry in queued_requests(view, self.ledger.clock.now()):
            if entry.allocation_id == allocation.allocation_id:
                return entry.position
        return None

    def _reply_worker_size(self, pool: str) -> Resources:
        """The worker size of `pool` as this command saved it; when it saved
        nothing, as the read models have it now."""
        writes = self._writes()
        saved = writes.pool_settings(pool) if writes is not None else None
        if saved is not None:
            return saved.worker_size
        return self._worker_size(pool)

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
        block_seconds: BlockSecondsArg = None,
        ctx: Context[Any, Any] | None = None,
    ) -> RequestResourcesResult:
        """Reserve workers and MCP servers for a job and get their endpoints.

        Each worker costs 1 CPU core and 2048 MB unless the pool says otherwise;
        MCP servers are shared by name across allocations, and a server's cost
        is held once by its running instance, not by each allocation. On
        success, status is "active" and the result lists the endpoints; the
        lease runs for ttl_seconds from now (renew_allocation extends it;
        release_resources ends it). If the request does not fit, nothing is
        reserved and the result is NOT an error: status is "failed", `error`
        says e.g.
        "Insufficient workers: requested 10, available 6", and `reason` gives
        {code, dimension, requested, available}; the refusal is recorded. Before
        refusing, allocations whose lease has already run out are expired to
        make room, then idle MCP servers the request does not name are
        stopped for their room.

        Scheduling: a request that does not fit may preempt live allocations
        of strictly lower priority where the pool allows it (by default
        critical preempts low and normal, high preempts low; the smallest set,
        lowest priority and youngest first); they end in state "preempted" and
        `preempted` lists their ids. preempt=false never does that. With
        wait=true a request that still does not fit is NOT refused: status is
        "queued", it holds nothing, `waiting_for` says what it waits for,
        `queue_position` its place (get_queue shows the queue), and it is
        granted (becomes active) as soon as room frees, in priority order.
        With block_seconds (1-240, needs wait=true) the call itself waits
        that long for the grant and answers as soon as it is active (with
        endpoints) or failed; progress notifications tell its queue position
        meanwhile; cancelling the call leaves it queued (await_allocation
        waits again).
        With max_wait_seconds (needs wait=true) it fails with reason code
        "queue_timeout" if not granted in time; release_resources cancels it.
        Under the pool's strict queue policy a new request does not pass
        requests queued ahead of it
        (code "queued_ahead"). A request bigger than the whole pool is never
        queued: with wait=true it is refused with code "exceeds_pool". A queued
        request that the pool can no longer ever hold (capacity or quota
        lowered below it) fails at once with "exceeds_pool" or
        "quota_exceeded".
        The allocation belongs to a tenant (by default the caller's: the
        token's tenant over HTTP); a tenant over its quota in the pool is
        refused with code "quota_exceeded", wait or not.
        dry_run=true reserves nothing and reports what would happen, including
        who would be preempted. Without the admin scope, expired_first and
        preempted name only your tenant's allocations.

        Retries: with the same request_id and the same arguments
        you get the original allocation back (replayed: true) and nothing
        changes. A request_id belongs to the tenant: another tenant's equal
        request_id is another allocation. Reusing a request_id with any
        argument different (job_id, mcp_servers, workers, priority,
        ttl_seconds, metadata, wait, max_wait_seconds, preempt) is an error
        naming each with both values, and so is a dry_run with a request_id
        already used (a dry run records nothing, so a later real request with
        its request_id is new).
        Invalid arguments (bad names, out-of-range numbers, unknown pool) are
        errors and reserve nothing.
        """
        caller = self._caller("request_resources")
        actor = caller.actor
        if block_seconds is not None and (dry_run or not wait):
            raise ToolError(
                "block_seconds waits for a queued request: it needs wait=true "
                "and no dry_run"
            )
        tenant = (
            caller.tenant
            if tenant is None
            else self._named_tenant(caller, "request_resources", tenant)
        )
        check_servers_known(self.service.settings.catalog, mcp_servers)

        def work() -> RequestResourcesResult:
            request = AllocationRequest(
                job_id=job_id,
                servers=tuple(mcp_servers),
                workers=workers,
                priority=Priority(priority),
                ttl_seconds=ttl_seconds,
                metadata=metadata if metadata is not None else {},
            )
            try:
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
            except RequestIdConflictError as error:
                raise ToolError(retry_conflict_message(error)) from error

            def shown(ids: tuple[str, ...]) -> tuple[str, ...]:
                seen = caller.visibility
                return tuple(i for i in ids if seen.includes(result.tenants.get(i)))

            # Built from what the command saved: nothing read after a commit
            # may turn it into an error (but the queue position, optional).
            return request_result(
                result.allocation,
                worker_size=self._reply_worker_size(result.allocation.pool),
                replayed=result.replayed,
                dry_run=result.dry_run,
                expired_first=shown(result.expired_first),
                preempted=shown(result.preempted),
                waiting_for=self._waiting_for(result),
                queue_position=self._queue_position(result),
            )

        reply = await self._call(work, settle=request_settle(request_id))
        if block_seconds is None:
            return reply
        return await self.waits.finish_request(
            reply, caller=caller, block_seconds=block_seconds, ctx=ctx
        )

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
        one whose lease has run out (is_expired) is expired, not released,
        its usage counted until expires_at, and says "already_released" too;
        releasing one that failed changes nothing and returns status
        "failed". An unknown allocation_id is an error, and so is, without
        the admin scope, another tenant's (the same error: it is not told
        apart from an unknown one).
        """
        caller = self._caller("release_resources")

        def work() -> ReleaseResourcesResult:
            outcome = self.ledger.release(
                allocation_id, actor=caller.actor, visibility=caller.visibility
            )
            result, allocation = outcome.result, outcome.allocation
            message = None
            if (
                allocation.state is AllocationState.EXPIRED
                and allocation.expires_at is not None
            ):
                message = (
                    f"allocation {allocation_id}'s lease ran out at "
                    f"{iso(allocation.expires_at)}: it is expired, its usage "
                    "counted until then; nothing is left to release"
                )
            elif result.status == "already_released":
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

        return await self._call(work, settle=release_settle())

    async def renew_allocation(
        self, allocation_id: AllocationIdArg, ttl_seconds: RenewTtlArg = None
    ) -> RenewResult:
        """Extend an active allocation's lease to now + ttl_seconds.

        Without ttl_seconds, the allocation's own ttl_seconds is used again.
        Call it while the job still needs its resources, before expires_at.
        Errors: an unknown allocation_id (without the admin scope, another
        tenant's is answered alike); an allocation that is no longer live
        (released, expired or failed); one whose lease has already run out,
        which is expired instead of renewed (request new resources then). Each
        call moves the expiry again, from the time of that call.
        """
        caller = self._caller("renew_allocation")

        def work() -> RenewResult:
            allocation = self.ledger.renew(
                allocation_id,
                ttl_seconds,
                actor=caller.actor,
                visibility=caller.visibility,
            )
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

        return await self._call(work, settle=renew_settle())

    async def cleanup_expired(self) -> CleanupResult:
        """Expire every allocation whose lease has run out, now.

        The server also does this on its own every few minutes; call it to
        settle things at once. Expired allocations give their capacity back,
        which goes to queued requests at once; queued requests whose
        max_wait_seconds has passed fail (reason code "queue_timeout").
        Returns the ids expired (`cleaned_up`) and their `count`; calling it
        again right away finds nothing more. Without the admin scope, only
        your tenant's allocations are listed and counted (others' expire all
        the same).
        """
        caller = self._caller("cleanup_expired")

        def work() -> CleanupResult:
            result = self.ledger.expire_due(actor=caller.actor)
            shown = [
                allocation_id
                for allocation_id, tenant in zip(
                    result.expired, result.tenants, strict=True
                )
                if caller.visibility.includes(tenant)
            ]
            errors = [
                line
                for line in result.deprovision_errors
                if line.split(":", 1)[0] in shown
            ]
            return CleanupResult(
                cleaned_up=shown, count=len(shown), deprovision_errors=errors
            )

        return await self._call(work, settle=repeat_settle("cleanup_expired"))
