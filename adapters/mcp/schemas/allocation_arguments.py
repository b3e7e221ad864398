"""What the allocation tools take: request, release, renew, get and list."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from allocation_ledger.adapters.mcp.schemas.units import MAX_LOG_POSITION
from allocation_ledger.domain.ports import MCP_PORT_FIRST, MCP_PORT_LAST
from allocation_ledger.domain.scheduling import MAX_WAIT_SECONDS
from allocation_ledger.domain.values import (
    JOB_ID_PATTERN,
    MAX_JOB_ID_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_SERVERS_PER_REQUEST,
    MAX_TTL_SECONDS,
    MAX_WORKERS_PER_REQUEST,
    MIN_TTL_SECONDS,
    POOL_NAME_PATTERN,
    SERVER_NAME_PATTERN,
    TENANT_PATTERN,
)
from allocation_ledger.projections.store import MAX_PAGE_SIZE

ALLOCATION_ID_PATTERN = r"^alloc-[0-9a-f]{12}$"


AllocationIdArg = Annotated[
    str,
    Field(
        strict=True,
        pattern=ALLOCATION_ID_PATTERN,
        description=(
            "The allocation's id as request_resources returned it: 'alloc-' "
            "followed by 12 lowercase hex characters, e.g. 'alloc-3f9c2a1b7d4e'."
        ),
    ),
]
JobIdArg = Annotated[
    str,
    Field(
        strict=True,
        min_length=1,
        max_length=MAX_JOB_ID_LENGTH,
        pattern=JOB_ID_PATTERN.pattern,
        description=(
            "Your job's identifier, e.g. 'feature-dev-001': printable ASCII, "
            f"1-{MAX_JOB_ID_LENGTH} characters, no leading or trailing spaces. "
            "Several allocations may share a job id."
        ),
    ),
]
ServerNameArg = Annotated[
    str,
    Field(
        strict=True,
        max_length=63,
        pattern=SERVER_NAME_PATTERN.pattern,
        description="An MCP server name such as 'filesystem' or 'github'.",
    ),
]
McpServersArg = Annotated[
    list[ServerNameArg],
    Field(
        max_length=MAX_SERVERS_PER_REQUEST,
        description=(
            "Names of the MCP servers the job needs, e.g. ['filesystem', 'github'] "
            "(may be empty). A server already running is shared; otherwise it is "
            "started on a free port of the pool's MCP range (get_capacity's "
            f"mcp_ports; {MCP_PORT_FIRST}-{MCP_PORT_LAST} unless configured). Names: "
            "1-63 lowercase letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit; at most {MAX_SERVERS_PER_REQUEST}, no repeats."
        ),
    ),
]
WorkersArg = Annotated[
    int,
    Field(
        strict=True,
        ge=0,
        le=MAX_WORKERS_PER_REQUEST,
        description=(
            "How many workers to reserve (each 1 CPU core and 2048 MB by default). "
            "0 for MCP servers only."
        ),
    ),
]


PriorityName = Literal["low", "normal", "high", "critical"]
"""A priority, lowest first."""
PriorityArg = Annotated[
    PriorityName,
    Field(description="How much the job matters: low, normal, high or critical."),
]
TtlArg = Annotated[
    int,
    Field(
        strict=True,
        ge=MIN_TTL_SECONDS,
        le=MAX_TTL_SECONDS,
        description=(
            "Lease length in seconds, counted from activation "
            f"({MIN_TTL_SECONDS}-{MAX_TTL_SECONDS}). When it runs out the "
            "allocation expires and its capacity is taken back; renew_allocation "
            "extends it."
        ),
    ),
]
MetadataArg = Annotated[
    dict[str, Any] | None,
    Field(
        description=(
            "Free-form JSON object kept with the allocation, e.g. "
            '{"task_type": "feature"}; at most 16384 bytes as JSON. Omit for {}.'
        )
    ),
]
RequestIdArg = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_REQUEST_ID_LENGTH,
        description=(
            "Optional idempotency key (1-200 characters). Retrying with the same "
            "request_id and the same arguments returns the original allocation "
            "and changes nothing, so a retry after a timeout never reserves "
            "twice; the same request_id with different arguments is refused as "
            "an error. Omit it and every call makes a new allocation."
        ),
    ),
]
PoolName = Annotated[
    str, Field(strict=True, max_length=63, pattern=POOL_NAME_PATTERN.pattern)
]
"""A pool's name, as every argument naming one pool takes it (each describes it)."""
PoolArg = Annotated[
    PoolName,
    Field(
        description="Capacity pool to use; 'default' unless an operator made others."
    ),
]
DryRunArg = Annotated[
    bool,
    Field(
        strict=True,
        description=(
            "If true, only check whether the request would fit now: nothing is "
            "reserved or recorded."
        ),
    ),
]
WaitArg = Annotated[
    bool,
    Field(
        strict=True,
        description=(
            "If true, a request that does not fit now waits in the pool's queue "
            "(status 'queued', holding nothing) and is granted when room frees, "
            "instead of being refused. If false, it is refused at once."
        ),
    ),
]
MaxWaitArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=1,
        le=MAX_WAIT_SECONDS,
        description=(
            "With wait: the longest to stay queued, in seconds "
            f"(1-{MAX_WAIT_SECONDS}); after that the request fails with reason "
            "code 'queue_timeout'. Omit to wait until granted or released "
            "(cancelled)."
        ),
    ),
]
MAX_BLOCK_SECONDS = 240
"""The longest one call may block (block_seconds): four minutes, so that the
answer always comes within the 300 s read timeout the official client's
HTTP transport has by default, with a minute to spare; wait again for
longer (await_allocation)."""
BlockSecondsArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=1,
        le=MAX_BLOCK_SECONDS,
        description=(
            "With wait=true: keep the call open up to this many seconds "
            f"(1-{MAX_BLOCK_SECONDS}) while the request is queued, and answer as "
            "soon as it is granted (status 'active', with endpoints), fails or "
            "times out in the queue; after that it answers status 'queued' as "
            "without it. Cancelling the call leaves the request queued "
            "(release_resources withdraws it). Omit to answer at once."
        ),
    ),
]
AwaitSecondsArg = Annotated[
    int,
    Field(
        strict=True,
        ge=1,
        le=MAX_BLOCK_SECONDS,
        description=(
            f"The longest to wait, in seconds (1-{MAX_BLOCK_SECONDS}); then the "
            "allocation is shown as it is (still queued or pending)."
        ),
    ),
]
PreemptArg = Annotated[
    bool,
    Field(
        strict=True,
        description=(
            "If true (the default) and the request does not fit, it may take the "
            "capacity of live allocations of strictly lower priority where the "
            "pool's preemption rules allow (by default critical preempts low and "
            "normal, high preempts low). False never preempts anyone."
        ),
    ),
]
TenantArg = Annotated[
    str | None,
    Field(
        max_length=128,
        pattern=TENANT_PATTERN.pattern,
        description=(
            "The tenant the allocation belongs to and whose quota it counts "
            "against. Omit for your own (the token's tenant over HTTP; no tenant "
            "over stdio). Naming another tenant needs the admin scope."
        ),
    ),
]


StateArg = Annotated[
    Literal[
        "queued",
        "pending",
        "active",
        "releasing",
        "released",
        "expired",
        "failed",
        "preempted",
    ]
    | None,
    Field(description="Only allocations in this state (omit for all states)."),
]
JobIdFilterArg = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=MAX_JOB_ID_LENGTH,
        pattern=JOB_ID_PATTERN.pattern,
        description=(
            "Only allocations of this job id (omit for all jobs): a job id as "
            "request_resources takes it (printable ASCII, no leading or "
            "trailing spaces); any other is refused, as no allocation has it."
        ),
    ),
]
PriorityFilterArg = Annotated[
    PriorityName | None,
    Field(description="Only allocations of this priority (omit for all)."),
]
PoolFilterArg = Annotated[
    str | None,
    Field(
        max_length=63,
        pattern=POOL_NAME_PATTERN.pattern,
        description="Only allocations in this pool (omit for all pools).",
    ),
]
TenantFilterArg = Annotated[
    str | None,
    Field(
        max_length=128,
        pattern=TENANT_PATTERN.pattern,
        description=(
            "Only allocations of this tenant. Omit for all you may see: your "
            "token's tenant, or every tenant with the admin scope (or over "
            "stdio). Naming another tenant needs the admin scope."
        ),
    ),
]
AfterArg = Annotated[
    int,
    Field(
        strict=True,
        ge=0,
        le=MAX_LOG_POSITION,
        description=(
            "Paging: only allocations whose `sequence` is greater than this; pass "
            "the last item's `sequence` to get the next page. 0 starts at the "
            "beginning."
        ),
    ),
]
LimitArg = Annotated[
    int,
    Field(
        strict=True,
        ge=1,
        le=MAX_PAGE_SIZE,
        description=f"At most this many allocations (1-{MAX_PAGE_SIZE}), oldest first.",
    ),
]
RenewTtlArg = Annotated[
    int | None,
    Field(
        strict=True,
        ge=MIN_TTL_SECONDS,
        le=MAX_TTL_SECONDS,
        description=(
            "New lease length in seconds from now "
            f"({MIN_TTL_SECONDS}-{MAX_TTL_SECONDS}); omit to reuse the "
            "allocation's own ttl_seconds."
        ),
    ),
]
