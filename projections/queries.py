"""Queries on the read models, with read-your-writes.

Every query first catches the read models up with the log, so it sees every
command acknowledged before the query began, whichever process ran it.
"""

from __future__ import annotations

from datetime import datetime

from allocation_ledger.domain.errors import AllocationNotFoundError
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.pool_settings import (
    DEFAULT_CAPACITY,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_WORKER_SIZE,
)
from allocation_ledger.domain.scheduling import DEFAULT_PREEMPTION
from allocation_ledger.domain.tenancy import EVERY_TENANT, Visibility
from allocation_ledger.domain.values import Resources
from allocation_ledger.projections.catchup import Projector
from allocation_ledger.projections.store import ListingQuery
from allocation_ledger.projections.views import AllocationView, CapacityView


class ReadModels:
    def __init__(self, projector: Projector) -> None:
        self.projector = projector
        self.store = projector.store

    def catch_up(self) -> int:
        return self.projector.catch_up()

    def allocation(
        self, allocation_id: str, visibility: Visibility = EVERY_TENANT
    ) -> AllocationView:
        """One allocation; AllocationNotFoundError for an unknown one, and
        alike for one of a tenant outside `visibility`."""
        self.catch_up()
        found = self.store.get_allocation(allocation_id)
        if found is None:
            raise AllocationNotFoundError(allocation_id)
        visibility.check(allocation_id, found.tenant)
        return found

    def allocations(self, query: ListingQuery | None = None) -> list[AllocationView]:
        self.catch_up()
        return self.store.list_allocations(query or ListingQuery())

    def capacity(self, pool: str = DEFAULT_POOL) -> CapacityView | None:
        """A pool's capacity; the default pool reads as new before first use."""
        self.catch_up()
        found = self.store.get_capacity(pool)
        if found is None and pool == DEFAULT_POOL:
            return CapacityView(
                pool=DEFAULT_POOL,
                total=DEFAULT_CAPACITY,
                reserved=Resources(),
                worker_size=DEFAULT_WORKER_SIZE,
                idle_timeout_seconds=DEFAULT_IDLE_TIMEOUT_SECONDS,
                preemption={k: list(v) for k, v in DEFAULT_PREEMPTION.items()},
            )
        return found

    def capacities(self) -> list[CapacityView]:
        self.catch_up()
        return self.store.list_capacities()

    def due(self, now: datetime, limit: int = 1000) -> list[AllocationView]:
        self.catch_up()
        return self.store.due_allocations(now, limit)
