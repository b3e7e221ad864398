"""What a pool holds, as its decisions read it.

The values the Pool aggregate keeps (live reservations, queued requests,
running MCP servers) and `PoolState`, the read-only view of a pool that the
pure decision functions take (capacity.py, queueing.py, preemption.py,
admission.py). The Pool aggregate is a PoolState; so is anything with the
same attributes, which is what lets those functions be tested on their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import AllocationRequest, Priority, Resources


@dataclass(frozen=True)
class Reservation:
    """Capacity held by one live allocation (pending, active or releasing).

    `resources`: millicores, MiB and workers held; `worker_ports` and
    `servers` (MCP server names): what it uses; `expires_at`: its lease;
    `priority` and `tenant`: what preemption and quotas look at;
    `reserved_at`: when it was reserved (None in snapshots older than
    preemption), which makes it younger or older than another.
    """

    allocation_id: str
    resources: Resources
    worker_ports: tuple[int, ...]
    servers: tuple[str, ...]
    expires_at: datetime
    priority: Priority = Priority.NORMAL
    tenant: str | None = None
    reserved_at: datetime | None = None


@dataclass(frozen=True)
class QueueEntry:
    """A request waiting for room. It holds nothing until it is granted.

    `arrival`: its place in arrival order (1, 2, ... per pool); `deadline`:
    when it times out (None: it waits as long as it takes); `tenant`: whose
    quota a grant counts against.
    """

    allocation_id: str
    request: AllocationRequest
    arrival: int
    enqueued_at: datetime
    deadline: datetime | None
    tenant: str | None


@dataclass(frozen=True)
class ServerInstance:
    """A running MCP server. Idle when no live allocation names it.

    `references`: how many live allocations use it; `idle_since`: when the
    last of them ended (None while in use). It keeps its port until stopped.
    `cost`: what it reserves in the pool while it runs, idle or not
    (millicores, MiB); None for an instance started before instances held
    their cost (its cost is then in the amounts its allocations reserved,
    until an allocation attaching to it under the new rule charges it).
    """

    name: str
    port: int
    references: int
    started_at: datetime
    idle_since: datetime | None
    cost: Resources | None = None

    @property
    def held(self) -> Resources:
        """What the instance itself reserves now (nothing when `cost` is None)."""
        return self.cost if self.cost is not None else Resources()


@dataclass(frozen=True)
class ReservedPorts:
    """Ports the pool assigned to one reservation."""

    worker_ports: tuple[int, ...]
    servers: tuple[tuple[str, int, bool], ...]  # name, port, started now
    stopped: tuple[tuple[str, int], ...] = ()  # idle servers reclaimed for room


class PoolState(Protocol):
    """A pool as the pure decision functions read it (the Pool aggregate is one).

    `available` is capacity minus what is reserved, by dimension
    (millicores, MiB, workers); it may be negative after capacity was
    lowered; what is reserved counts live reservations (their workers) and
    running MCP server instances (their costs, idle or not). `quotas`: each
    tenant's limits on what its allocations may hold at once.
    """

    @property
    def settings(self) -> PoolSettings: ...

    @property
    def available(self) -> Resources: ...

    @property
    def reservations(self) -> Mapping[str, Reservation]: ...

    @property
    def servers(self) -> Mapping[str, ServerInstance]: ...

    @property
    def ports(self) -> PortRanges: ...

    @property
    def scheduling(self) -> Scheduling: ...

    @property
    def queue(self) -> Mapping[str, QueueEntry]: ...

    @property
    def quotas(self) -> Mapping[str, Resources]: ...
