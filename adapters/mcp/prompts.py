"""The MCP prompts: conversation starters a person picks in their MCP client,
filled with the ledger's live facts so the model starts from them.

- `size_request`: size a job's request against a pool as it is now, check
  it with a dry run, then make it safely;
- `explain_refusal`: why a request was refused, queued or preempted, and
  the smallest change that would let it through.

Each reads what the tools read (with the read scope), so it shows what the
caller may see. A pool or allocation that does not exist is an
invalid-params error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import anyio.to_thread
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import BaseModel, Field

from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.http.auth import Access
from allocation_ledger.adapters.mcp.schemas.allocation_arguments import (
    ALLOCATION_ID_PATTERN,
    PoolName,
)
from allocation_ledger.adapters.mcp.schemas.capacity import CapacityResult
from allocation_ledger.adapters.mcp.schemas.refusals import Reason
from allocation_ledger.domain.errors import LedgerError
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.tenancy import Visibility

TaskArg = Annotated[
    str,
    Field(
        min_length=1,
        max_length=4000,
        description=(
            "What the job does and needs, in your words, e.g. 'review 40 pull "
            "requests in parallel, each needs the github server'."
        ),
    ),
]
PromptPoolArg = Annotated[
    PoolName, Field(description="The pool to size the request for.")
]
PromptAllocationArg = Annotated[
    str,
    Field(
        pattern=ALLOCATION_ID_PATTERN,
        description="The allocation_id request_resources answered.",
    ),
]
REASON_CODES = " ".join(
    (
        Reason.model_fields["code"].description or "",
        "A reason's 'preemption', when present:",
        Reason.model_fields["preemption"].description or "",
    )
)
CAPACITY_FACTS = (
    "pool",
    "total_cpu",
    "total_memory",
    "total_workers",
    "allocated_cpu",
    "allocated_memory",
    "allocated_workers",
    "available_cpu",
    "available_memory",
    "available_workers",
    "worker_size",
    "free_mcp_ports",
    "queue_length",
    "queue_policy",
    "cross_tenant_preemption",
    "quotas",
    "held_by_tenant",
)


async def _read(access: Access, prompt: str, work: Callable[[Visibility], Any]) -> Any:
    """`work`'s answer, read off the event loop, if the caller may read, as
    the caller sees it (another tenant's allocation reads as unknown, and
    other tenants' holdings are left out), exactly as the tools answer."""
    try:
        caller = access.caller("read", f"the prompt {prompt}")
        return await anyio.to_thread.run_sync(work, caller.visibility)
    except (ToolError, LedgerError) as error:
        raise MCPError(code=INVALID_PARAMS, message=str(error)) from error


def _facts(model: BaseModel, keys: tuple[str, ...] | None = None) -> str:
    data = model.model_dump(mode="json", exclude_none=True)
    if keys is not None:
        data = {key: data[key] for key in keys if key in data}
    return json.dumps(data, indent=2)


def _servers_offered(catalog: Catalog) -> str:
    if not catalog.mcp_servers:
        return (
            "MCP servers: any name may be asked for (this ledger hands out "
            "addresses; something else runs the servers)."
        )
    costs = ", ".join(
        f"{name} ({entry.cpu:g} cores, {entry.memory} MB per running instance)"
        for name, entry in sorted(catalog.mcp_servers.items())
    )
    return f"MCP servers this ledger runs (only these may be asked for): {costs}."


def register_prompts(
    server: MCPServer[Any],
    access: Access,
    catalog: Catalog,
    *,
    capacity: Callable[[str, Visibility], CapacityResult],
    detail: Callable[[str, Visibility], BaseModel],
) -> None:
    """The ledger's prompts; `capacity` and `detail` answer as get_capacity
    and get_allocation do (blocking)."""

    @server.prompt(title="Size a job's request")
    async def size_request(task: TaskArg, pool: PromptPoolArg = DEFAULT_POOL) -> str:
        """Work out how many workers and which MCP servers a job needs, from
        the pool's capacity now; check it with a dry run, then request it
        with a request_id so a retry is safe."""
        now = await _read(access, "size_request", lambda seen: capacity(pool, seen))
        return f"""\
Size a request to the Allocation Ledger for this job, then make it.

The job: {task}

Pool {pool!r} now (get_capacity; cpu in cores, memory in MB):
{_facts(now, CAPACITY_FACTS)}
Servers already up in the pool: {", ".join(now.running_mcp_servers) or "none"}.
{_servers_offered(catalog)}

1. Decide how many workers the job can keep busy at once (each costs \
worker_size; ask for no more than it will use) and the fewest MCP servers \
that do the job.
2. Call request_resources with them and dry_run=true: it says whether the \
request fits and whom it would preempt, and reserves nothing.
3. Call request_resources for real, with a request_id you make up (a retry \
with it is then safe), ttl_seconds a little over the job's expected run \
(renew_allocation extends it), and wait=true if the job can wait for room.
4. Tell me the allocation_id, the endpoints and when the lease ends; if it \
was refused, which dimension was short (reason) and what you suggest."""

    @server.prompt(title="Explain a refused request")
    async def explain_refusal(allocation_id: PromptAllocationArg) -> str:
        """Explain why a request was refused, is queued or was preempted,
        from its recorded reason and its pool as it is now, and the smallest
        change that would let it through."""
        shown = await _read(
            access, "explain_refusal", lambda seen: detail(allocation_id, seen)
        )
        pool = str(getattr(shown, "pool", DEFAULT_POOL))
        now = await _read(access, "explain_refusal", lambda seen: capacity(pool, seen))
        return f"""\
Explain to me, in plain words, what became of allocation {allocation_id} and \
what to do about it.

The allocation (get_allocation):
{_facts(shown)}

Its pool now (get_capacity; cpu in cores, memory in MB):
{_facts(now, CAPACITY_FACTS)}

Reason codes: {REASON_CODES}

Say which dimension was short and by how much, whether the pool has room for \
it now, and the smallest change that would let it through: fewer workers or \
servers, another pool, wait=true, a higher priority, or more capacity or quota \
from an admin. If it was not refused (it is active, or was released), say so \
and say what it holds."""
