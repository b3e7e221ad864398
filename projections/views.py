"""The shapes of the read models: what queries return."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.values import Resources


@dataclass
class WorkerView:
    worker_id: str
    port: int
    endpoint: str | None = None


@dataclass
class ServerUseView:
    """An MCP server as one allocation uses it."""

    name: str
    port: int
    started: bool
    endpoint: str | None = None


@dataclass
class AllocationView:
    """One allocation as the listing shows it."""

    allocation_id: str
    pool: str
    job_id: str
    state: str
    priority: str
    workers_requested: int
    servers_requested: list[str]
    ttl_seconds: int
    metadata: dict[str, Any]
    request_id: str | None
    resources: Resources
    workers: list[WorkerView]
    servers: list[ServerUseView]
    created_at: datetime
    requested_by: str
    updated_at: datetime
    activated_at: datetime | None = None
    expires_at: datetime | None = None
    ended_at: datetime | None = None
    release_requested_at: datetime | None = None
    rejection: dict[str, Any] | None = None
    error: str | None = None
    renewals: int = 0
    last_actor: str = ""
    version: int = 0
    sequence: int = 0
    """Position of the allocation's first event in the log: the listing order."""
    tenant: str | None = None
    queue_deadline: datetime | None = None
    waiting_for: dict[str, Any] | None = None
    preempted_by: str | None = None
    reserved_at: datetime | None = None
    """When its capacity was reserved: at the request when it fitted at once,
    at the grant when it waited in the queue; None while it holds nothing
    yet, and for good when it never held anything (rejected, timed out or
    cancelled in the queue). Usage counts from here."""


@dataclass
class ServerView:
    """An MCP server running in a pool. `cost`: what the instance reserves
    in the pool while it runs, idle or not (None: started before instances
    held their cost; its allocations' amounts hold it)."""

    name: str
    port: int
    references: int
    started_at: datetime
    idle_since: datetime | None
    cost: Resources | None = None

    @property
    def status(self) -> str:
        return "running" if self.references > 0 else "idle"


@dataclass
class QueuedView:
    """A request waiting in a pool's queue."""

    allocation_id: str
    job_id: str
    priority: str
    workers: int
    servers: list[str]
    resources: Resources
    arrival: int
    enqueued_at: datetime
    deadline: datetime | None
    tenant: str | None


@dataclass
class CapacityView:
    """A pool's totals, what is reserved, and its MCP servers. `reserved`
    counts live allocations' amounts and running instances' costs."""

    pool: str
    total: Resources
    reserved: Resources
    worker_size: Resources
    idle_timeout_seconds: int
    live_allocations: int = 0
    servers: dict[str, ServerView] = field(default_factory=dict)
    worker_ports_in_use: int = 0
    updated_at: datetime | None = None
    version: int = 0
    queue: dict[str, QueuedView] = field(default_factory=dict)
    arrivals: int = 0
    queue_policy: str = "strict"
    aging_seconds: int = 600
    preemption: dict[str, list[str]] = field(default_factory=dict)
    cross_tenant_preemption: str = "over_quota"
    """over_quota, any or never (domain/scheduling.py, CrossTenantPreemption)."""
    quotas: dict[str, Resources] = field(default_factory=dict)
    held_by_tenant: dict[str, Resources] = field(default_factory=dict)
    ports: PortRanges = field(default_factory=PortRanges)
    """The ranges the pool hands ports out from now."""

    @property
    def available(self) -> Resources:
        return self.total - self.reserved
