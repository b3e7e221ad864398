"""How the Pool's state is written into snapshots (JSON, via eventsourcing)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.persistence import Transcoding

from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.pool_state import QueueEntry, Reservation, ServerInstance
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.scheduling import Scheduling, cross_tenant_of
from allocation_ledger.domain.values import (
    AllocationRequest,
    Priority,
    QueuePolicy,
    Resources,
)


class ResourcesAsDict(Transcoding):
    type = Resources
    name = "allocation-ledger:resources"

    def encode(self, obj: Resources) -> dict[str, int]:
        return obj.as_dict()

    def decode(self, data: dict[str, int]) -> Resources:
        return Resources.from_dict(data)


class ReservationAsDict(Transcoding):
    type = Reservation
    name = "allocation-ledger:reservation"

    def encode(self, obj: Reservation) -> dict[str, Any]:
        return {
            "allocation_id": obj.allocation_id,
            "resources": obj.resources,
            "worker_ports": list(obj.worker_ports),
            "servers": list(obj.servers),
            "expires_at": obj.expires_at,
            "priority": obj.priority.value,
            "tenant": obj.tenant,
            "reserved_at": obj.reserved_at,
        }

    def decode(self, data: dict[str, Any]) -> Reservation:
        expires_at: datetime = data["expires_at"]
        return Reservation(
            allocation_id=data["allocation_id"],
            resources=data["resources"],
            worker_ports=tuple(data["worker_ports"]),
            servers=tuple(data["servers"]),
            expires_at=expires_at,
            priority=Priority(data.get("priority", Priority.NORMAL.value)),
            tenant=data.get("tenant"),
            reserved_at=data.get("reserved_at"),
        )


class QueueEntryAsDict(Transcoding):
    type = QueueEntry
    name = "allocation-ledger:queue-entry"

    def encode(self, obj: QueueEntry) -> dict[str, Any]:
        return {
            "allocation_id": obj.allocation_id,
            "request": obj.request.as_dict(),
            "arrival": obj.arrival,
            "enqueued_at": obj.enqueued_at,
            "deadline": obj.deadline,
            "tenant": obj.tenant,
        }

    def decode(self, data: dict[str, Any]) -> QueueEntry:
        return QueueEntry(
            allocation_id=data["allocation_id"],
            request=AllocationRequest.restore(data["request"]),
            arrival=data["arrival"],
            enqueued_at=data["enqueued_at"],
            deadline=data["deadline"],
            tenant=data["tenant"],
        )


class SchedulingAsDict(Transcoding):
    type = Scheduling
    name = "allocation-ledger:scheduling"

    def encode(self, obj: Scheduling) -> dict[str, Any]:
        return {
            "queue_policy": obj.queue_policy.value,
            "aging_seconds": obj.aging_seconds,
            "preemption": {k: list(v) for k, v in obj.preemption.items()},
            "cross_tenant_preemption": obj.cross_tenant_preemption.value,
        }

    def decode(self, data: dict[str, Any]) -> Scheduling:
        return Scheduling(
            queue_policy=QueuePolicy(data["queue_policy"]),
            aging_seconds=data["aging_seconds"],
            preemption={k: tuple(v) for k, v in data["preemption"].items()},
            # Absent in snapshots older than the setting: `over_quota`, as the
            # pool's events read (scheduling.cross_tenant_of).
            cross_tenant_preemption=cross_tenant_of(
                data.get("cross_tenant_preemption")
            ),
        )


class ServerInstanceAsDict(Transcoding):
    type = ServerInstance
    name = "allocation-ledger:server-instance"

    def encode(self, obj: ServerInstance) -> dict[str, Any]:
        encoded = {
            "name": obj.name,
            "port": obj.port,
            "references": obj.references,
            "started_at": obj.started_at,
            "idle_since": obj.idle_since,
        }
        if obj.cost is not None:  # absent: started before instances held costs
            encoded["cost"] = obj.cost
        return encoded

    def decode(self, data: dict[str, Any]) -> ServerInstance:
        return ServerInstance(**data)


class PoolSettingsAsDict(Transcoding):
    type = PoolSettings
    name = "allocation-ledger:pool-settings"

    def encode(self, obj: PoolSettings) -> dict[str, Any]:
        return {
            "capacity": obj.capacity,
            "worker_size": obj.worker_size,
            "server_costs": dict(obj.server_costs or {}),
            "idle_timeout_seconds": obj.idle_timeout_seconds,
            "server_idle_timeouts": dict(obj.server_idle_timeouts or {}),
        }

    def decode(self, data: dict[str, Any]) -> PoolSettings:
        timeouts = data.get("server_idle_timeouts") or None  # none: as before them
        return PoolSettings(**{**data, "server_idle_timeouts": timeouts})


class IntSetAsList(Transcoding):
    type = set
    name = "allocation-ledger:set"

    def encode(self, obj: set[Any]) -> list[Any]:
        return sorted(obj)

    def decode(self, data: list[Any]) -> set[Any]:
        return set(data)


class PortRangesAsDict(Transcoding):
    type = PortRanges
    name = "allocation-ledger:port-ranges"

    def encode(self, obj: PortRanges) -> dict[str, int]:
        return obj.as_dict()

    def decode(self, data: dict[str, int]) -> PortRanges:
        return PortRanges(**data)


TRANSCODINGS: tuple[Transcoding, ...] = (
    PortRangesAsDict(),
    ResourcesAsDict(),
    ReservationAsDict(),
    ServerInstanceAsDict(),
    PoolSettingsAsDict(),
    IntSetAsList(),
    QueueEntryAsDict(),
    SchedulingAsDict(),
)
