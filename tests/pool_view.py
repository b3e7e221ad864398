"""`PoolView`: a pool's state as the domain's decision functions read it
(`domain.pool_state.PoolState`), built directly from its parts rather than
from a Pool's events.

The preemption tests (through tests/preemption_reference.py) and the bench of
preemption victims (bench/preemption.py, item 8) build their pools with it. It
imports only the domain, so both can import it: `tests` is importable from the
repository's root, where the tests and the benches run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.pool_state import QueueEntry, Reservation, ServerInstance
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import Resources


@dataclass
class PoolView:
    """A pool's state as the decision functions read it, built directly.

    `capacity`: the pool's totals (millicores, MiB, workers); `available`
    is that minus what `reservations`, `also_held` and the running
    `servers`' costs hold."""

    capacity: Resources
    reservations: Mapping[str, Reservation]
    servers: Mapping[str, ServerInstance] = field(default_factory=dict)
    ports: PortRanges = field(default_factory=PortRanges)
    scheduling: Scheduling = field(default_factory=Scheduling)
    queue: Mapping[str, QueueEntry] = field(default_factory=dict)
    quotas: Mapping[str, Resources] = field(default_factory=dict)
    server_costs: Mapping[str, Resources] = field(default_factory=dict)
    """What a server started now costs, by name."""

    @property
    def settings(self) -> PoolSettings:
        return PoolSettings(capacity=self.capacity, server_costs=self.server_costs)

    also_held: Resources = field(default_factory=Resources)
    """Held by reservations that are not candidates (granted in the same
    decision), beside `reservations`."""
    also_held_by_tenant: Mapping[str, Resources] = field(default_factory=dict)
    """`also_held`, by tenant (what counts toward a tenant's holdings)."""

    @property
    def available(self) -> Resources:
        held = self.also_held
        for reservation in self.reservations.values():
            held = held + reservation.resources
        for server in self.servers.values():
            if server.cost is not None:
                held = held + server.cost
        return self.capacity - held
