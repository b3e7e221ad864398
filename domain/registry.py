"""The PoolRegistry aggregate: which pools exist and which ports each may use.

Sweeps visit every pool it names. It is also what keeps pools' port ranges
apart: a pool is created, and its ranges changed, under the registry's
version, so two pools never get overlapping ranges even when two servers
decide at once (the later save loses on the version and decides again).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, uuid5

from eventsourcing.domain import Aggregate

from allocation_ledger.domain.ports import PortRanges

REGISTRY_ID = uuid5(NAMESPACE_URL, "allocation-ledger:pool-registry")
DEFAULT_POOL_NAME = "default"


class PoolRegistry(Aggregate):
    """Every pool's name, in order of creation, and its port ranges.

    `ports`: the ranges recorded for each pool. Pools registered before
    ranges were recorded here have the ranges of the original rule
    (`ranges_of`). `moved`: pools whose ranges were changed after creation,
    which may still hold ports outside their ranges.
    """

    TOPIC = "allocation-ledger:pool-registry"

    class Event(Aggregate.Event):
        TOPIC = "allocation-ledger:pool-registry:event"
        actor: str

    class Opened(Event, Aggregate.Created):
        TOPIC = "allocation-ledger:pool-registry:opened"

    class PoolRegistered(Event):
        TOPIC = "allocation-ledger:pool-registry:pool-registered"
        name: str
        ports: dict[str, int] | None = None

        def apply(self, aggregate: PoolRegistry) -> None:
            aggregate.pools.append(self.name)
            if self.ports is not None:
                aggregate.ports[self.name] = dict(self.ports)

    class PortsChanged(Event):
        TOPIC = "allocation-ledger:pool-registry:ports-changed"
        name: str
        ports: dict[str, int]

        def apply(self, aggregate: PoolRegistry) -> None:
            aggregate.ports[self.name] = dict(self.ports)
            if self.name not in aggregate.moved:
                aggregate.moved.append(self.name)

    def __init__(self) -> None:
        self.pools: list[str] = []
        self.ports: dict[str, dict[str, Any]] = {}
        self.moved: list[str] = []

    @classmethod
    def open(cls, *, at: datetime, actor: str) -> PoolRegistry:
        return cls._create(cls.Opened, id=REGISTRY_ID, timestamp=at, actor=actor)

    def register(
        self, name: str, *, at: datetime, actor: str, ports: PortRanges | None = None
    ) -> None:
        """Add a pool (nothing if it is registered already), with its ranges."""
        if name in self.pools:
            return
        self.trigger_event(
            self.PoolRegistered,
            timestamp=at,
            actor=actor,
            name=name,
            ports=None if ports is None else ports.as_dict(),
        )

    def change_ports(
        self, name: str, ports: PortRanges, *, at: datetime, actor: str
    ) -> None:
        """Record a registered pool's new ranges."""
        self.trigger_event(
            self.PortsChanged,
            timestamp=at,
            actor=actor,
            name=name,
            ports=ports.as_dict(),
        )

    def ranges_of(self, name: str) -> PortRanges | None:
        """The ranges of a registered pool (None: not registered)."""
        if name not in self.pools:
            return None
        recorded = self.ports.get(name)
        if recorded is not None:
            return PortRanges(**recorded)
        if name == DEFAULT_POOL_NAME:
            return PortRanges()
        others = [p for p in self.pools if p != DEFAULT_POOL_NAME]
        return PortRanges.for_other_pool(others.index(name))

    def ranges_of_others(self, name: str) -> dict[str, PortRanges]:
        """Every registered pool's ranges but those of `name`."""
        found: dict[str, PortRanges] = {}
        for other in self.pools:
            ranges = self.ranges_of(other)
            if other != name and ranges is not None:
                found[other] = ranges
        return found
