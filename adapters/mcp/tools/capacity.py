"""The capacity tools: get_capacity (now, or at a past moment) and set_capacity."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.mcp.schemas.capacity import (
    AtArg,
    CapacityCpuArg,
    CapacityMemoryArg,
    CapacityPoolArg,
    CapacityResult,
    CapacityWorkersArg,
    SetCapacityResult,
    capacity_result,
)
from allocation_ledger.adapters.mcp.schemas.units import iso, utc, with_amounts
from allocation_ledger.adapters.mcp.tools.group import ToolGroup
from allocation_ledger.adapters.mcp.tools.outcomes import repeat_settle
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage import audit
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.projections.aggregate_views import capacity_view_of


class CapacityTools(ToolGroup):
    """Show a pool's capacity, now or as it was; set its totals."""

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
        (available_* may be negative meanwhile); queued requests bigger than
        the new totals fail at once with reason code "exceeds_pool", and a
        raise grants queued requests that now fit. Setting the totals a pool
        already has changes nothing (changed: false). Returns the pool's
        capacity afterwards.
        """
        actor = self._actor("set_capacity")
        if cpu is None and memory is None and workers is None:
            msg = "set_capacity needs at least one of cpu, memory and workers"
            raise ToolError(msg)

        def work() -> SetCapacityResult:
            total = self._capacity_view(pool).total
            capacity = with_amounts(total, cpu=cpu, memory=memory, workers=workers)
            result = self.ledger.set_capacity(capacity, pool=pool, actor=actor)
            # From the pool as the command saved it, not from a read after it.
            view = self._enforced(capacity_result(capacity_view_of(result.pool)))
            return SetCapacityResult(**dict(view), changed=result.position is not None)

        return await self._call(work, settle=repeat_settle("set_capacity"))

    async def get_capacity(
        self, pool: CapacityPoolArg = DEFAULT_POOL, at: AtArg = None
    ) -> CapacityResult:
        """Show a pool's capacity: totals, allocated, available, MCP servers.

        CPU in cores, memory in MB. available_* is total minus allocated (it
        can be negative after capacity was lowered below what is held).
        running_mcp_servers names the servers up (running or idle);
        mcp_servers gives each one's port, status and users. Scheduling:
        queue_length (requests waiting; get_queue lists them), queue_policy,
        aging_seconds, preemption rules, cross_tenant_preemption (whether
        those reach other tenants' allocations: over_quota, the default,
        only those of tenants over their quota here; any; never), each
        tenant's quotas and what each
        tenant holds (held_by_tenant; without the admin scope, your tenant's
        only: the pool's totals are everyone's to see). With `at`, the
        pool as it was at that past moment, replayed from the event log. An
        unknown pool (or one that did not exist yet at `at`) is an error, and
        so is an `at` after now (the future is not known).
        """
        caller = self._caller("get_capacity")
        if at is None:
            return await self._call(
                lambda: self.capacity(pool, caller.visibility), at_once=True
            )
        moment = utc(at)
        now = self.ledger.clock.now()
        if moment > now:
            msg = (
                f"at must be a past moment (or now), got {iso(moment)}, after now "
                f"({iso(now)}): what the pool will hold is not known; omit at "
                "for the pool now"
            )
            raise ToolError(msg)
        return await self._call(
            lambda: _tenants_seen(
                self._enforced(
                    capacity_result(
                        audit.capacity_at(self.service, moment, pool).capacity
                    )
                ),
                caller.visibility,
            )
        )

    def capacity(self, pool: str, visibility: Visibility) -> CapacityResult:
        """get_capacity's answer for now (also the pool capacity resource)
        for a caller who sees `visibility`."""
        result = self._enforced(capacity_result(self._capacity_view(pool)))
        return _tenants_seen(result, visibility)

    def _enforced(self, result: CapacityResult) -> CapacityResult:
        """The result with its pool's worker enforcement."""
        provisioner = self.ledger.provisioner
        if isinstance(provisioner, ProcessProvisioner) and provisioner.runs_workers(
            result.pool
        ):
            enforcement = provisioner.worker_enforcement()
            if enforcement is not None:
                result.worker_enforcement = enforcement
        return result


def _tenants_seen(result: CapacityResult, visibility: Visibility) -> CapacityResult:
    """The result with the quotas and holdings of the tenants `visibility`
    includes only; the pool's totals stay."""
    if visibility.tenant is not None:
        result.quotas = {
            t: q for t, q in result.quotas.items() if visibility.includes(t)
        }
        result.held_by_tenant = {
            t: h for t, h in result.held_by_tenant.items() if visibility.includes(t)
        }
    return result
