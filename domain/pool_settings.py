"""A pool's settings: how big it is, what workers and MCP servers cost.

Amounts are domain units: CPU in integer millicores, memory in integer MiB,
whole workers. The defaults are the original resource manager's (design
contract, "Original defaults"): 16 cores, 32768 MB, 10 workers; a worker is
1 core and 2048 MB; an MCP server costs nothing unless configured; idle MCP
servers stop after 300 s.

An MCP server's cost is what one running instance of it reserves in the
pool, from the decision that starts it until it stops (docs/provisioning.md,
"What a server costs"); an allocation holds only its workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.ports import WORKER_PORT_FIRST, WORKER_PORT_LAST
from allocation_ledger.domain.values import (
    MAX_TTL_SECONDS,
    MILLICORES_PER_CORE,
    AllocationRequest,
    Resources,
)

DEFAULT_CAPACITY = Resources(16 * MILLICORES_PER_CORE, 32768, 10)
DEFAULT_WORKER_SIZE = Resources(1 * MILLICORES_PER_CORE, 2048, 1)
DEFAULT_IDLE_TIMEOUT_SECONDS = 300

MAX_WORKERS_CAPACITY = WORKER_PORT_LAST - WORKER_PORT_FIRST + 1
"""A pool's workers each need a port of its worker range (1,000 ports)."""
MAX_CPU_MILLICORES = 1_000_000 * 1000
MAX_MEMORY_MIB = 1024 * 1024 * 1024
MAX_IDLE_TIMEOUT_SECONDS = MAX_TTL_SECONDS


@dataclass(frozen=True)
class PoolSettings:
    """How big a pool is and what its workers and MCP servers cost.

    `capacity`: the pool's totals (millicores, MiB, workers). `worker_size`:
    what one worker holds (its `workers` is 1). `server_costs`: what one
    running instance of an MCP server reserves in the pool, by server name
    (CPU and memory only; none configured: free), recorded on the instance
    when it starts. `idle_timeout_seconds`: how
    long an MCP server no live allocation uses keeps its port before it is
    stopped; `server_idle_timeouts`: that time for each server named there
    (the catalog's `idle_timeout_seconds` per server), the pool's for others.
    """

    capacity: Resources = DEFAULT_CAPACITY
    worker_size: Resources = DEFAULT_WORKER_SIZE
    server_costs: Mapping[str, Resources] | None = None
    idle_timeout_seconds: int = DEFAULT_IDLE_TIMEOUT_SECONDS
    server_idle_timeouts: Mapping[str, int] | None = None

    def idle_timeout_of(self, name: str) -> int:
        """Seconds MCP server `name` may stay idle before it is stopped."""
        return (self.server_idle_timeouts or {}).get(name, self.idle_timeout_seconds)

    def cost_of_server(self, name: str) -> Resources:
        """What one running instance of MCP server `name` reserves (millicores,
        MiB; no workers) when it starts now."""
        if self.server_costs is None:
            return Resources()
        return self.server_costs.get(name, Resources())

    def workers_for(self, request: AllocationRequest) -> Resources:
        """What an allocation for `request` holds while live: its workers
        (millicores, MiB, workers). The MCP servers it names hold their
        costs themselves, once per running instance."""
        return Resources(
            self.worker_size.cpu_millicores * request.workers,
            self.worker_size.memory_mib * request.workers,
            request.workers,
        )

    def in_empty_pool(self, request: AllocationRequest) -> Resources:
        """What granting `request` would reserve in a pool where nothing
        runs: its workers plus one instance of each server it names (what
        `capacity.never_fits` compares with the pool's totals)."""
        total = self.workers_for(request)
        for name in request.servers:
            total = total + self.cost_of_server(name)
        return total


def costs_to_event(costs: Mapping[str, Resources] | None) -> dict[str, Any]:
    """Server costs as the Pool's events store them: by name, in name order."""
    return {name: amount.as_dict() for name, amount in sorted((costs or {}).items())}


def timeouts_to_event(timeouts: Mapping[str, int] | None) -> dict[str, int] | None:
    """Per-server idle timeouts as the Pool's events store them: by name, in
    name order; None when there are none (as in histories before them)."""
    if not timeouts:
        return None
    return dict(sorted(timeouts.items()))


def costs_from_event(costs: Mapping[str, Any]) -> dict[str, Resources]:
    """Server costs from a Pool event (the inverse of `costs_to_event`)."""
    return {name: Resources.from_dict(amount) for name, amount in costs.items()}


def validate_capacity(capacity: Resources) -> None:
    """Check a pool's totals (or a tenant's quota, the same shape).

    Each amount must be a whole number from 0 up to its limit: CPU
    MAX_CPU_MILLICORES, memory MAX_MEMORY_MIB, workers MAX_WORKERS_CAPACITY.
    Raises InvalidRequestError naming the field (cpu, memory or workers).
    """
    limits = (
        ("cpu", capacity.cpu_millicores, MAX_CPU_MILLICORES),
        ("memory", capacity.memory_mib, MAX_MEMORY_MIB),
        ("workers", capacity.workers, MAX_WORKERS_CAPACITY),
    )
    for name, value, limit in limits:
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"capacity {name} must be a whole number, got {value!r}"
            raise InvalidRequestError(msg, field=name)
        if not 0 <= value <= limit:
            msg = f"capacity {name} must be between 0 and {limit}, got {value}"
            raise InvalidRequestError(msg, field=name)


def validate_settings(settings: PoolSettings) -> None:
    """Check all of a pool's settings: its capacity (`validate_capacity`), a
    worker size and server costs not negative (servers cost no workers), an
    idle timeout from 0 to MAX_IDLE_TIMEOUT_SECONDS. Raises
    InvalidRequestError naming the field."""
    validate_capacity(settings.capacity)
    size = settings.worker_size
    if size.cpu_millicores < 0 or size.memory_mib < 0:
        msg = f"worker size must not be negative, got {size}"
        raise InvalidRequestError(msg, field="worker_size")
    for name, cost in (settings.server_costs or {}).items():
        if cost.cpu_millicores < 0 or cost.memory_mib < 0 or cost.workers != 0:
            msg = f"cost of MCP server {name!r} must be CPU and memory >= 0, got {cost}"
            raise InvalidRequestError(msg, field="server_costs")
    for name, seconds in (settings.server_idle_timeouts or {}).items():
        if isinstance(seconds, bool) or not isinstance(seconds, int):
            msg = f"idle timeout of MCP server {name!r} must be whole seconds"
            raise InvalidRequestError(msg, field="idle_timeout_seconds")
        if not 0 <= seconds <= MAX_IDLE_TIMEOUT_SECONDS:
            msg = (
                f"idle timeout of MCP server {name!r} must be between 0 and "
                f"{MAX_IDLE_TIMEOUT_SECONDS}, got {seconds}"
            )
            raise InvalidRequestError(msg, field="idle_timeout_seconds")
    if not 0 <= settings.idle_timeout_seconds <= MAX_IDLE_TIMEOUT_SECONDS:
        msg = (
            f"idle_timeout_seconds must be between 0 and {MAX_IDLE_TIMEOUT_SECONDS}, "
            f"got {settings.idle_timeout_seconds}"
        )
        raise InvalidRequestError(msg, field="idle_timeout_seconds")
