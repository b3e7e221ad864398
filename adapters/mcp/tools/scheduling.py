"""The scheduling tools: get_queue, set_quota and set_scheduling."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.mcp.schemas.scheduling import (
    UNLIMITED,
    AgingSecondsArg,
    ClearArg,
    CrossTenantArg,
    PreemptionArg,
    QueuePolicyArg,
    QueuePoolArg,
    QueueResult,
    QuotaCpuArg,
    QuotaMemoryArg,
    QuotaResult,
    QuotaTenantArg,
    QuotaWorkersArg,
    SchedulingPoolArg,
    SchedulingResult,
    cross_tenant_name,
    preemption_rules,
    queued_requests,
    quota_limits,
    tenant_holdings,
    tenant_quotas,
)
from allocation_ledger.adapters.mcp.schemas.units import amounts, with_amounts
from allocation_ledger.adapters.mcp.tools.group import ToolGroup
from allocation_ledger.adapters.mcp.tools.outcomes import repeat_settle
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.scheduling import CrossTenantPreemption, Scheduling
from allocation_ledger.domain.values import QueuePolicy, Resources
from allocation_ledger.projections.aggregate_views import capacity_view_of


class SchedulingTools(ToolGroup):
    """Show a pool's queue; set tenants' quotas and the pool's queue and
    preemption rules."""

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
        is available now. An unknown pool is an error. Without the admin
        scope, only your tenant's requests are listed (and counted); their
        positions count every request waiting, so a gap means others' wait
        ahead.
        """
        caller = self._caller("get_queue")

        def work() -> QueueResult:
            view = self._capacity_view(pool)
            entries = [
                entry
                for entry in queued_requests(view, self.ledger.clock.now())
                if caller.visibility.includes(entry.tenant)
            ]
            return QueueResult(
                pool=view.pool,
                queue=entries,
                count=len(entries),
                queue_policy=QueuePolicy(view.queue_policy).value,
                aging_seconds=view.aging_seconds,
                preemption=preemption_rules(view),
                cross_tenant_preemption=cross_tenant_name(view),
                available=amounts(view.available),
            )

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

        A tenant is whom a request belongs to: by default the caller's
        token's tenant (its subject unless configured). Give any of cpu
        (cores), memory (MB) and workers; the others keep their current
        limit, or have none if the tenant had no quota. clear=true removes
        the quota. A request that would take the tenant past a limit is
        refused with reason code "quota_exceeded" (waiting does not help: it
        is not queued). Lowering a quota below what the tenant holds evicts
        nothing; it only refuses its new requests. A
        queued request of the tenant bigger than the new limit fails at once
        with "quota_exceeded" and the queue moves on.
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
                limits = with_amounts(current, cpu=cpu, memory=memory, workers=workers)
            result = self.ledger.set_quota(tenant, limits, pool=pool, actor=actor)
            # From the pool as the command saved it, not from a read after it.
            view = capacity_view_of(result.pool)
            quota = view.quotas.get(tenant)
            return QuotaResult(
                pool=pool,
                tenant=tenant,
                quota=None if quota is None else quota_limits(quota),
                held=amounts(view.held_by_tenant.get(tenant, Resources())),
                changed=result.position is not None,
                quotas=tenant_quotas(view),
                held_by_tenant=tenant_holdings(view),
            )

        return await self._call(work, settle=repeat_settle("set_quota"))

    async def set_scheduling(
        self,
        *,
        pool: SchedulingPoolArg = DEFAULT_POOL,
        queue_policy: QueuePolicyArg = None,
        aging_seconds: AgingSecondsArg = None,
        preemption: PreemptionArg = None,
        cross_tenant_preemption: CrossTenantArg = None,
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
        {} turns preemption off; it replaces all the rules.
        cross_tenant_preemption: whether those rules reach other tenants'
        allocations (priorities are self-declared, so across tenants they
        prove nothing): "over_quota" (the default for a new pool: another
        tenant's allocation may be preempted only while that tenant holds
        more than its quota in the pool, and only one holding some of a
        dimension it is over in; a tenant without a quota is never preempted
        by another), "any" (priorities compare across tenants; pools from
        before this setting) or "never". Admin callers are no exception.
        Omitted settings are kept. Setting what the pool already has
        changes nothing (changed: false). A change that lets waiting
        requests in grants them at once. Returns the pool's scheduling
        afterwards.
        """
        actor = self._actor("set_scheduling")
        if (
            queue_policy is None
            and aging_seconds is None
            and preemption is None
            and cross_tenant_preemption is None
        ):
            msg = (
                "set_scheduling needs at least one of queue_policy, aging_seconds, "
                "preemption and cross_tenant_preemption"
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
                cross_tenant_preemption=CrossTenantPreemption(
                    cross_tenant_preemption or view.cross_tenant_preemption
                ),
            )
            result = self.ledger.configure_scheduling(
                scheduling, pool=pool, actor=actor
            )
            # From the pool as the command saved it, not from a read after it.
            after = capacity_view_of(result.pool)
            return SchedulingResult(
                pool=pool,
                queue_policy=QueuePolicy(after.queue_policy).value,
                aging_seconds=after.aging_seconds,
                preemption=preemption_rules(after),
                cross_tenant_preemption=cross_tenant_name(after),
                queue_length=len(after.queue),
                changed=result.position is not None,
            )

        return await self._call(work, settle=repeat_settle("set_scheduling"))
