"""The allocation queries: get_allocation and list_allocations (also behind
the allocation resources)."""

from __future__ import annotations

import json
from typing import Annotated

from mcp_types import CallToolResult, TextContent

from allocation_ledger.adapters.mcp.schemas.allocation_arguments import (
    AfterArg,
    AllocationIdArg,
    JobIdFilterArg,
    LimitArg,
    PoolFilterArg,
    PriorityFilterArg,
    StateArg,
    TenantFilterArg,
)
from allocation_ledger.adapters.mcp.schemas.allocation_listing import (
    AllocationDetail,
    AllocationList,
    allocation_detail,
    allocation_summary,
)
from allocation_ledger.adapters.mcp.tools.group import ToolGroup
from allocation_ledger.adapters.mcp.tools.servers import (
    show_live_servers,
    show_workers,
)
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.domain.values import AllocationState, Priority
from allocation_ledger.projections.store import MAX_PAGE_SIZE, ListingQuery


class AllocationQueries(ToolGroup):
    """Show one allocation; list allocations."""

    async def get_allocation(self, allocation_id: AllocationIdArg) -> AllocationDetail:
        """Show one allocation: state, resources, endpoints, times, lease.

        Includes what it holds, its MCP server and worker endpoints, its
        timestamps (created, activated, expires, released), whether its lease
        has run out (is_expired), its tenant and, for a refused request, the
        error and reason. A queued one (state "queued") holds nothing and
        shows queue_deadline and waiting_for; a preempted one shows
        preempted_by, the allocation that took its capacity (left out when that
        one is another tenant's and you lack the admin scope). An unknown
        allocation_id is an error; without the admin scope, so is another
        tenant's, with the same words.
        """
        caller = self._caller("get_allocation")
        return await self._call(lambda: self.detail(allocation_id, caller.visibility))

    def detail(self, allocation_id: str, visibility: Visibility) -> AllocationDetail:
        """get_allocation's answer (also the allocation resource) for a
        caller who sees `visibility`; blocking."""
        view = self.read.allocation(allocation_id, visibility)
        if view.preempted_by is not None and not self._visible_ids(
            [view.preempted_by], visibility
        ):
            view.preempted_by = None
        detail = allocation_detail(
            view,
            worker_size=self._worker_size(view.pool, caught_up=True),
            now=self.ledger.clock.now(),
        )
        if view.state == AllocationState.ACTIVE.value:
            show_live_servers(detail, self.ledger.provisioner)
        show_workers(detail, self.ledger)
        return detail

    async def list_allocations(
        self,
        *,
        state: StateArg = None,
        job_id: JobIdFilterArg = None,
        priority: PriorityFilterArg = None,
        pool: PoolFilterArg = None,
        after: AfterArg = 0,
        limit: LimitArg = MAX_PAGE_SIZE,
        tenant: TenantFilterArg = None,
    ) -> Annotated[CallToolResult, AllocationList]:
        """List allocations, oldest first, optionally filtered.

        Without the admin scope you see your tenant's allocations only; with
        it (or over stdio), every tenant's. Filters: state (queued, pending,
        active, releasing, released, expired, failed, preempted), job_id,
        priority, pool, tenant. Each item has
        allocation_id, job_id, state, priority, workers, age_seconds and
        is_expired, plus pool, created_at, expires_at, sequence, tenant,
        queue_deadline and, when preempted, preempted_by. Returns at most
        `limit` items; for the next
        page pass the last item's sequence as `after`. The text result is the
        JSON list; the structured result is {allocations, count}.
        """
        caller = self._caller("list_allocations")
        query = ListingQuery(
            state=None if state is None else AllocationState(state),
            job_id=job_id,
            priority=None if priority is None else Priority(priority),
            pool=pool,
            after=after,
            limit=limit,
            tenant=self._tenant_filter(caller, "list_allocations", tenant),
        )

        def work() -> AllocationList:
            views = self.read.allocations(query)
            preemptors = [v.preempted_by for v in views if v.preempted_by]
            shown = self._visible_ids(preemptors, caller.visibility)
            for view in views:
                if view.preempted_by not in shown:
                    view.preempted_by = None
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
