"""Where read models are kept, and the in-memory keeping of them."""

from __future__ import annotations

import copy
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.pool import pool_uuid
from allocation_ledger.domain.values import LIVE_STATES, AllocationState, Priority
from allocation_ledger.projections.usage import UsageQuery, UsageRow, usage_of
from allocation_ledger.projections.views import AllocationView, CapacityView

MAX_PAGE_SIZE = 1000
UNFINISHED_STATES = (
    AllocationState.QUEUED,
    AllocationState.PENDING,
    AllocationState.ACTIVE,
    AllocationState.RELEASING,
)
"""The states an allocation leaves again: waiting, or holding capacity."""


@dataclass(frozen=True)
class ListingQuery:
    """Filters and page of an allocation listing, in request order.

    `tenant`: only that tenant's allocations (None: every tenant's).
    """

    state: AllocationState | None = None
    job_id: str | None = None
    priority: Priority | None = None
    pool: str | None = None
    after: int = 0
    limit: int = MAX_PAGE_SIZE
    tenant: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            msg = f"limit must be between 1 and {MAX_PAGE_SIZE}, got {self.limit}"
            raise InvalidRequestError(msg, field="limit")
        if self.after < 0:
            msg = f"after must be 0 or a listing position, got {self.after}"
            raise InvalidRequestError(msg, field="after")

    def matches(self, view: AllocationView) -> bool:
        return (
            (self.state is None or view.state == self.state.value)
            and (self.job_id is None or view.job_id == self.job_id)
            and (self.priority is None or view.priority == self.priority.value)
            and (self.pool is None or view.pool == self.pool)
            and (self.tenant is None or view.tenant == self.tenant)
            and view.sequence > self.after
        )


class ReadModelStore(Protocol):
    """Persists read-model rows together with the log position they reflect."""

    def position(self) -> int:
        """The last notification applied (0 when none)."""
        ...

    def allocations(self, ids: Collection[UUID]) -> dict[UUID, AllocationView]:
        """Copies of the rows of these allocation aggregates, to fold events into."""
        ...

    def capacities(self, ids: Collection[UUID]) -> dict[UUID, CapacityView]:
        """Copies of the rows of these pool aggregates."""
        ...

    def commit(
        self,
        *,
        expected: int,
        position: int,
        allocations: Sequence[AllocationView],
        capacities: Sequence[CapacityView],
    ) -> bool:
        """Write rows and move the position from `expected`, atomically.

        Returns False, writing nothing, when the position is no longer
        `expected` (another process applied those events first).
        """
        ...

    def get_allocation(self, allocation_id: str) -> AllocationView | None: ...

    def list_allocations(self, query: ListingQuery) -> list[AllocationView]: ...

    def due_allocations(self, now: datetime, limit: int) -> list[AllocationView]:
        """Live allocations whose lease ran out, by (expires_at, id)."""
        ...

    def count_unfinished(self) -> dict[tuple[str, str], int]:
        """How many allocations are in each state that is not terminal
        (queued, pending, active, releasing), by (pool, state); states with
        none are left out. Reads live rows only, never the terminal ones."""
        ...

    def get_capacity(self, pool: str) -> CapacityView | None: ...

    def list_capacities(self) -> list[CapacityView]: ...

    def usage(self, query: UsageQuery, now: datetime) -> list[UsageRow]:
        """Usage per (job, pool) in the query's window, live ones up to `now`."""
        ...

    def clear(self) -> None:
        """Drop every row and go back to position 0."""
        ...


class InMemoryReadModels:
    """Read models held in dictionaries: for tests, replays and audits.

    Allocations are indexed by state and by tenant (a tenant's listing and
    usage read that tenant's rows only).
    """

    def __init__(self) -> None:
        self._position = 0
        self._allocations: dict[UUID, AllocationView] = {}
        self._by_state: dict[str, dict[UUID, AllocationView]] = {}
        self._by_tenant: dict[str | None, dict[UUID, AllocationView]] = {}
        self._capacities: dict[UUID, CapacityView] = {}
        self._lock = threading.Lock()

    def position(self) -> int:
        return self._position

    def allocations(self, ids: Collection[UUID]) -> dict[UUID, AllocationView]:
        with self._lock:
            return {
                i: copy.deepcopy(self._allocations[i])
                for i in ids
                if i in self._allocations
            }

    def capacities(self, ids: Collection[UUID]) -> dict[UUID, CapacityView]:
        with self._lock:
            return {
                i: copy.deepcopy(self._capacities[i])
                for i in ids
                if i in self._capacities
            }

    def commit(
        self,
        *,
        expected: int,
        position: int,
        allocations: Sequence[AllocationView],
        capacities: Sequence[CapacityView],
    ) -> bool:
        with self._lock:
            if self._position != expected:
                return False
            for view in allocations:
                key = allocation_uuid(view.allocation_id)
                old = self._allocations.get(key)
                if old is not None:
                    self._by_state.get(old.state, {}).pop(key, None)
                self._allocations[key] = view
                self._by_state.setdefault(view.state, {})[key] = view
                self._by_tenant.setdefault(view.tenant, {})[key] = view
            for capacity in capacities:
                self._capacities[pool_uuid(capacity.pool)] = capacity
            self._position = position
            return True

    def get_allocation(self, allocation_id: str) -> AllocationView | None:
        with self._lock:
            found = self._allocations.get(allocation_uuid(allocation_id))
            return None if found is None else copy.deepcopy(found)

    def list_allocations(self, query: ListingQuery) -> list[AllocationView]:
        with self._lock:
            if query.tenant is not None:
                candidates = list(self._by_tenant.get(query.tenant, {}).values())
            elif query.state is not None:
                candidates = list(self._by_state.get(query.state.value, {}).values())
            else:
                candidates = list(self._allocations.values())
            chosen = sorted(
                (v for v in candidates if query.matches(v)), key=lambda v: v.sequence
            )
            return copy.deepcopy(chosen[: query.limit])

    def all_allocations(self) -> list[AllocationView]:
        """Every row in listing order (replays read their own models whole)."""
        with self._lock:
            return sorted(self._allocations.values(), key=lambda v: v.sequence)

    def due_allocations(self, now: datetime, limit: int) -> list[AllocationView]:
        with self._lock:
            due = [
                v
                for state in LIVE_STATES
                for v in self._by_state.get(state.value, {}).values()
                if v.expires_at is not None and v.expires_at <= now
            ]
            due.sort(key=lambda v: (v.expires_at or now, v.allocation_id))
            return copy.deepcopy(due[:limit])

    def count_unfinished(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for state in UNFINISHED_STATES:
                for view in self._by_state.get(state.value, {}).values():
                    key = (view.pool, view.state)
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def get_capacity(self, pool: str) -> CapacityView | None:
        with self._lock:
            found = self._capacities.get(pool_uuid(pool))
            return None if found is None else copy.deepcopy(found)

    def list_capacities(self) -> list[CapacityView]:
        with self._lock:
            views = sorted(self._capacities.values(), key=lambda v: v.pool)
            return copy.deepcopy(views)

    def usage(self, query: UsageQuery, now: datetime) -> list[UsageRow]:
        with self._lock:
            if query.tenant is not None:
                return usage_of(
                    self._by_tenant.get(query.tenant, {}).values(), query, now
                )
            return usage_of(self._allocations.values(), query, now)

    def clear(self) -> None:
        with self._lock:
            self._position = 0
            self._allocations.clear()
            self._by_state.clear()
            self._by_tenant.clear()
            self._capacities.clear()
