"""The audit tools: an allocation's event history, and usage accounting."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.mcp.schemas.allocation_arguments import (
    AllocationIdArg,
    JobIdFilterArg,
    PoolFilterArg,
    TenantFilterArg,
)
from allocation_ledger.adapters.mcp.schemas.history import HistoryResult, history_result
from allocation_ledger.adapters.mcp.schemas.units import iso, utc
from allocation_ledger.adapters.mcp.schemas.usage import (
    SinceArg,
    UntilArg,
    UsageResult,
    UsageRowResult,
)
from allocation_ledger.adapters.mcp.tools.group import ToolGroup
from allocation_ledger.adapters.storage import audit
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid, is_allocation_id
from allocation_ledger.domain.errors import AllocationNotFoundError
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.projections.usage import UsageQuery

OTHER_TENANT_ACTOR = "another tenant"
"""The actor shown, without the admin scope, for a preemption by another
tenant's request (its subject is not shown)."""


class AuditTools(ToolGroup):
    """Read the record: every event of an allocation, and what jobs used."""

    async def get_allocation_history(
        self, allocation_id: AllocationIdArg
    ) -> HistoryResult:
        """Every event of one allocation, in order: what happened, when, by whom.

        Each event has its version, kind (requested, queued, granted,
        rejected, activated, renewed, release_requested, released, expired,
        preempted, failed), time, actor (a token subject, "local" over stdio,
        "system:sweeper" for expiry by the server, "system:scheduler" for a
        grant or queue timeout) and what it changed; `tenant` is whom the
        allocation belongs to (its "requested" event records it). Read from
        the event log itself, so it is the audit record. An unknown
        allocation_id is an error; without the admin scope, so is another
        tenant's, with the same words (and a "preempted" event names the
        allocation that took the capacity only when it is your tenant's).
        """
        caller = self._caller("get_allocation_history")
        return await self._call(lambda: self.history(allocation_id, caller.visibility))

    def history(self, allocation_id: str, visibility: Visibility) -> HistoryResult:
        """get_allocation_history's answer (also its resource), from the log,
        for a caller who sees `visibility`."""
        events = self._events(allocation_id)
        if not events or not isinstance(events[0], Allocation.Requested):
            raise AllocationNotFoundError(allocation_id)
        visibility.check(allocation_id, events[0].tenant)
        result = history_result(allocation_id, events)
        for entry in result.events:
            by = entry.changes.get("preempted_by")
            if by is not None and not self._sees(by, visibility):
                # who preempted it is another tenant's: neither its
                # allocation nor its token's subject is shown
                entry.changes["preempted_by"] = None
                entry.actor = OTHER_TENANT_ACTOR
        return result

    def _events(self, allocation_id: str) -> list[Allocation.Event]:
        """Every event of an allocation, from the log (none for what is not
        an allocation id)."""
        if not is_allocation_id(allocation_id):
            return []
        store = self.ledger.repository.event_store
        return [
            event
            for event in store.get(allocation_uuid(allocation_id))
            if isinstance(event, Allocation.Event)
        ]

    def _sees(self, allocation_id: str, visibility: Visibility) -> bool:
        """Whether an allocation is visible, by the tenant its first event
        records."""
        if visibility.tenant is None:
            return True
        store = self.ledger.repository.event_store
        first = next(iter(store.get(allocation_uuid(allocation_id), limit=1)), None)
        return isinstance(first, Allocation.Requested) and visibility.includes(
            first.tenant
        )

    async def get_usage(
        self,
        *,
        job_id: JobIdFilterArg = None,
        pool: PoolFilterArg = None,
        since: SinceArg = None,
        until: UntilArg = None,
        tenant: TenantFilterArg = None,
    ) -> UsageResult:
        """What each job held, per pool, over a period: the accounting.

        For each (job, pool): cpu_core_seconds, memory_mb_seconds,
        worker_seconds, mcp_server_seconds, and the allocations requested in
        the period by state. Only reserved time is billed: from the moment
        capacity is reserved (the request, or the grant of a queued request)
        to its release, preemption or failure; an expired allocation up to
        its lease's end; a live one up to now. Time in the queue counts 0.
        Only the part inside [since, until) counts. Without the admin scope,
        only your tenant's allocations count; with it (or over stdio), every
        tenant's, or the one named by `tenant`.
        """
        caller = self._caller("get_usage")
        now = self.ledger.clock.now()
        query = UsageQuery(
            job_id=job_id,
            pool=pool,
            since=None if since is None else utc(since),
            until=None if until is None else utc(until),
            tenant=self._tenant_filter(caller, "get_usage", tenant),
        )
        if query.since and query.until and query.since >= query.until:
            msg = "since must be before until"
            raise ToolError(msg)
        if query.since and query.since >= now:
            msg = (
                f"since must be before now ({iso(now)}): nothing is billed after "
                "now, so a period that starts later holds nothing yet"
            )
            raise ToolError(msg)

        def work() -> UsageResult:
            rows = audit.usage(self.service, query, now)
            return UsageResult(
                usage=[UsageRowResult.model_validate(r.as_dict()) for r in rows],
                count=len(rows),
                since=query.since,
                until=query.billed_until(now),
            )

        return await self._call(work)
