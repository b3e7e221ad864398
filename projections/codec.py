"""Read-model rows to and from plain JSON-ready dictionaries."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.values import Resources
from allocation_ledger.projections.views import (
    AllocationView,
    CapacityView,
    QueuedView,
    ServerUseView,
    ServerView,
    WorkerView,
)

MOMENT_TEXTS: dict[int, tuple[datetime, str]] = {}
"""moment.isoformat() of recent moments, by identity (see `moment_text`)."""
_TEXTS_KEPT = 4096


def moment_text(moment: datetime) -> str:
    """moment.isoformat(), remembered by identity: the decoder hands out one
    datetime per distinct moment, which a row holds several times over
    (requested, reserved and activated at once; released when updated), and
    audits write a million of them. Equal datetimes in different zones are
    different objects, each written as itself."""
    found = MOMENT_TEXTS.get(id(moment))
    if found is not None and found[0] is moment:
        return found[1]
    text = moment.isoformat()
    if len(MOMENT_TEXTS) >= _TEXTS_KEPT:
        MOMENT_TEXTS.clear()
    MOMENT_TEXTS[id(moment)] = (moment, text)  # holding it: its id is not reused
    return text


def _time(value: datetime | None) -> str | None:
    return None if value is None else moment_text(value)


def _parse(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


def _parse_required(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


def allocation_to_dict(view: AllocationView) -> dict[str, Any]:
    return {
        "allocation_id": view.allocation_id,
        "sequence": view.sequence,
        "pool": view.pool,
        "job_id": view.job_id,
        "state": view.state,
        "priority": view.priority,
        "workers_requested": view.workers_requested,
        "servers_requested": list(view.servers_requested),
        "ttl_seconds": view.ttl_seconds,
        "metadata": view.metadata,
        "request_id": view.request_id,
        "resources": view.resources.as_dict(),
        "workers": [[w.worker_id, w.port, w.endpoint] for w in view.workers],
        "servers": [[s.name, s.port, s.started, s.endpoint] for s in view.servers],
        "created_at": _time(view.created_at),
        "requested_by": view.requested_by,
        "updated_at": _time(view.updated_at),
        "activated_at": _time(view.activated_at),
        "expires_at": _time(view.expires_at),
        "ended_at": _time(view.ended_at),
        "release_requested_at": _time(view.release_requested_at),
        "rejection": view.rejection,
        "error": view.error,
        "renewals": view.renewals,
        "last_actor": view.last_actor,
        "version": view.version,
        "tenant": view.tenant,
        "queue_deadline": _time(view.queue_deadline),
        "waiting_for": view.waiting_for,
        "preempted_by": view.preempted_by,
        "reserved_at": _time(view.reserved_at),
    }


def allocation_from_dict(data: dict[str, Any]) -> AllocationView:
    return AllocationView(
        allocation_id=data["allocation_id"],
        sequence=data["sequence"],
        pool=data["pool"],
        job_id=data["job_id"],
        state=data["state"],
        priority=data["priority"],
        workers_requested=data["workers_requested"],
        servers_requested=list(data["servers_requested"]),
        ttl_seconds=data["ttl_seconds"],
        metadata=data["metadata"],
        request_id=data["request_id"],
        resources=Resources.from_dict(data["resources"]),
        workers=[WorkerView(w[0], w[1], w[2]) for w in data["workers"]],
        servers=[ServerUseView(s[0], s[1], s[2], s[3]) for s in data["servers"]],
        created_at=_parse_required(data["created_at"]),
        requested_by=data["requested_by"],
        updated_at=_parse_required(data["updated_at"]),
        activated_at=_parse(data["activated_at"]),
        expires_at=_parse(data["expires_at"]),
        ended_at=_parse(data["ended_at"]),
        release_requested_at=_parse(data["release_requested_at"]),
        rejection=data["rejection"],
        error=data["error"],
        renewals=data["renewals"],
        last_actor=data["last_actor"],
        version=data["version"],
        tenant=data.get("tenant"),
        queue_deadline=_parse(data.get("queue_deadline")),
        waiting_for=data.get("waiting_for"),
        preempted_by=data.get("preempted_by"),
        reserved_at=_parse(data.get("reserved_at")),
    )


def capacity_to_dict(view: CapacityView) -> dict[str, Any]:
    return {
        "pool": view.pool,
        "total": view.total.as_dict(),
        "reserved": view.reserved.as_dict(),
        "worker_size": view.worker_size.as_dict(),
        "idle_timeout_seconds": view.idle_timeout_seconds,
        "live_allocations": view.live_allocations,
        "servers": [_server_to_list(s) for s in view.servers.values()],
        "worker_ports_in_use": view.worker_ports_in_use,
        "updated_at": _time(view.updated_at),
        "version": view.version,
        "queue": [
            [
                q.allocation_id,
                q.job_id,
                q.priority,
                q.workers,
                q.servers,
                q.resources.as_dict(),
                q.arrival,
                _time(q.enqueued_at),
                _time(q.deadline),
                q.tenant,
            ]
            for q in view.queue.values()
        ],
        "arrivals": view.arrivals,
        "queue_policy": view.queue_policy,
        "aging_seconds": view.aging_seconds,
        "preemption": view.preemption,
        "cross_tenant_preemption": view.cross_tenant_preemption,
        "quotas": {t: r.as_dict() for t, r in sorted(view.quotas.items())},
        "held_by_tenant": {
            t: r.as_dict() for t, r in sorted(view.held_by_tenant.items())
        },
        "ports": view.ports.as_dict(),
    }


def _server_to_list(server: ServerView) -> list[Any]:
    """A server as stored: its cost last, only when it holds one (rows of
    instances started before instances held their cost stay as they were)."""
    row: list[Any] = [
        server.name,
        server.port,
        server.references,
        _time(server.started_at),
        _time(server.idle_since),
    ]
    if server.cost is not None:
        row.append(server.cost.as_dict())
    return row


def capacity_from_dict(data: dict[str, Any]) -> CapacityView:
    servers = [
        ServerView(
            s[0],
            s[1],
            s[2],
            _parse_required(s[3]),
            _parse(s[4]),
            Resources.from_dict(s[5]) if len(s) > 5 else None,
        )
        for s in data["servers"]
    ]
    return CapacityView(
        pool=data["pool"],
        total=Resources.from_dict(data["total"]),
        reserved=Resources.from_dict(data["reserved"]),
        worker_size=Resources.from_dict(data["worker_size"]),
        idle_timeout_seconds=data["idle_timeout_seconds"],
        live_allocations=data["live_allocations"],
        servers={s.name: s for s in servers},
        worker_ports_in_use=data["worker_ports_in_use"],
        updated_at=_parse(data["updated_at"]),
        version=data["version"],
        queue={
            q[0]: QueuedView(
                allocation_id=q[0],
                job_id=q[1],
                priority=q[2],
                workers=q[3],
                servers=list(q[4]),
                resources=Resources.from_dict(q[5]),
                arrival=q[6],
                enqueued_at=_parse_required(q[7]),
                deadline=_parse(q[8]),
                tenant=q[9],
            )
            for q in data.get("queue", [])
        },
        arrivals=data.get("arrivals", 0),
        queue_policy=data.get("queue_policy", "strict"),
        aging_seconds=data.get("aging_seconds", 600),
        preemption=data.get("preemption", {}),
        # Absent in rows older than the setting: as their pools read
        # (scheduling.cross_tenant_of).
        cross_tenant_preemption=data.get("cross_tenant_preemption", "over_quota"),
        quotas={t: Resources.from_dict(r) for t, r in data.get("quotas", {}).items()},
        held_by_tenant={
            t: Resources.from_dict(r) for t, r in data.get("held_by_tenant", {}).items()
        },
        ports=PortRanges(**data["ports"]) if "ports" in data else PortRanges(),
    )
