"""The PoolRegistry aggregate: which pools exist, so sweeps can visit them all."""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, uuid5

from eventsourcing.domain import Aggregate

REGISTRY_ID = uuid5(NAMESPACE_URL, "allocation-ledger:pool-registry")


class PoolRegistry(Aggregate):
    TOPIC = "allocation-ledger:pool-registry"

    class Event(Aggregate.Event):
        TOPIC = "allocation-ledger:pool-registry:event"
        actor: str

    class Opened(Event, Aggregate.Created):
        TOPIC = "allocation-ledger:pool-registry:opened"

    class PoolRegistered(Event):
        TOPIC = "allocation-ledger:pool-registry:pool-registered"
        name: str

        def apply(self, aggregate: PoolRegistry) -> None:
            aggregate.pools.append(self.name)

    def __init__(self) -> None:
        self.pools: list[str] = []

    @classmethod
    def open(cls, *, at: datetime, actor: str) -> PoolRegistry:
        return cls._create(cls.Opened, id=REGISTRY_ID, timestamp=at, actor=actor)

    def register(self, name: str, *, at: datetime, actor: str) -> None:
        if name in self.pools:
            return
        self.trigger_event(self.PoolRegistered, timestamp=at, actor=actor, name=name)
