"""The audit tools: an allocation's event history, and usage accounting."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.mcp.schemas.allocation_arguments import (
    AllocationIdArg,
    JobIdFilterArg,
    PoolFilterArg,
)
from allocation_ledger.adapters.mcp.schemas.history import HistoryResult, history_result
from allocation_ledger.adapters.mcp.schemas.units import utc
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
from allocation_ledger.projections.usage import UsageQuery


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
        grant or queue timeout) and what it changed. Read from the event log
        itself, so it is the audit record. An unknown allocation_id is an
        error.
        """
        self._actor("get_allocation_history")
        return await self._call(lambda: self.history(allocation_id))

    def history(self, allocation_id: str) -> HistoryResult:
        """get_allocation_history's answer (also its resource), from the log."""
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
        the period by state. Only reserved time is billed: from the moment
        capacity is reserved (the request, or the grant of a queued request)
        to its release, preemption or failure; an expired allocation up to
        its lease's end; a live one up to now. Time in the queue counts 0.
        Only the part inside [since, until) counts.
        """
        self._actor("get_usage")
        now = self.ledger.clock.now()
        query = UsageQuery(
            job_id=job_id,
            pool=pool,
            since=None if since is None else utc(since),
            until=None if until is None else utc(until),
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
