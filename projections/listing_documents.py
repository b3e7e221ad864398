"""Allocation listing rows folded straight into their stored documents.

A store that keeps each allocation's listing row as a JSON document (the SQL
read models) does not need the `AllocationView` of it while it folds: this
is `folds.fold_allocation` followed by `codec.allocation_to_dict`, done on
the dictionary itself, which a rebuild of a long history does a million
times (building the views and their dictionaries was two fifths of it).

A `ListingDocument` is the dictionary `allocation_to_dict` gives, same keys
in the same order, except that its moments (`MOMENTS`) are still datetimes:
the store's columns are computed from them, and `stored_document` gives the
dictionary to encode, moments in ISO 8601 as the codec writes them.

This is a second copy of the allocation folds: each fold here does what
its namesake in folds.py does to a view. tests/test_listing_documents.py
folds every kind of allocation event both ways and compares the results,
and the stored rows, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import worker_id
from allocation_ledger.domain.values import AllocationState
from allocation_ledger.projections.codec import (
    MOMENT_TEXTS,
    allocation_to_dict,
    moment_text,
)
from allocation_ledger.projections.folds import fold_of
from allocation_ledger.projections.views import AllocationView

ListingDocument = dict[str, Any]
"""An allocation's listing row as `allocation_to_dict` would give it, its
moments (`MOMENTS`) still datetimes (or None)."""

MOMENTS = (
    "created_at",
    "updated_at",
    "activated_at",
    "expires_at",
    "ended_at",
    "release_requested_at",
    "queue_deadline",
    "reserved_at",
)

_PENDING = AllocationState.PENDING.value
_QUEUED = AllocationState.QUEUED.value
_ACTIVE = AllocationState.ACTIVE.value
_RELEASING = AllocationState.RELEASING.value
_RELEASED = AllocationState.RELEASED.value
_EXPIRED = AllocationState.EXPIRED.value
_FAILED = AllocationState.FAILED.value
_PREEMPTED = AllocationState.PREEMPTED.value


def document_of(view: AllocationView) -> ListingDocument:
    """The document of a row the store gave as a view (to fold more into)."""
    document = allocation_to_dict(view)
    for name in MOMENTS:
        document[name] = getattr(view, name)
    return document


def _resources(amounts: dict[str, int]) -> dict[str, int]:
    """`Resources.from_dict(amounts).as_dict()`, without the Resources."""
    return {
        "cpu_millicores": amounts["cpu_millicores"],
        "memory_mib": amounts["memory_mib"],
        "workers": amounts["workers"],
    }


def _workers(allocation_id: str, ports: list[int]) -> list[list[Any]]:
    return [[worker_id(allocation_id, i), port, None] for i, port in enumerate(ports)]


def _servers(servers: list[list[Any]]) -> list[list[Any]]:
    return [
        [str(name), int(port), bool(started), None] for name, port, started in servers
    ]


def requested_document(event: Allocation.Requested, sequence: int) -> ListingDocument:
    """The row a request starts (folds._requested), listed at `sequence`."""
    request = event.request
    at = event.timestamp
    actor = event.actor
    return {
        "allocation_id": event.allocation_id,
        "sequence": sequence,
        "pool": event.pool,
        "job_id": request["job_id"],
        "state": _PENDING,
        "priority": request["priority"],
        "workers_requested": request["workers"],
        "servers_requested": list(request["servers"]),
        "ttl_seconds": request["ttl_seconds"],
        "metadata": request["metadata"],
        "request_id": event.request_id,
        "resources": _resources(event.resources),
        "workers": _workers(event.allocation_id, event.worker_ports),
        "servers": _servers(event.servers),
        "created_at": at,
        "requested_by": actor,
        "updated_at": at,
        "activated_at": None,
        "expires_at": event.expires_at,
        "ended_at": None,
        "release_requested_at": None,
        "rejection": None,
        "error": None,
        "renewals": 0,
        "last_actor": actor,
        "version": event.originator_version,
        "tenant": event.tenant,
        "queue_deadline": None,
        "waiting_for": None,
        "preempted_by": None,
        # Held from the request unless a Queued or Rejected follows it.
        "reserved_at": at,
    }


def _rejected(row: ListingDocument, event: Allocation.Rejected) -> None:
    row["state"] = _FAILED
    row["rejection"] = dict(event.reason)
    row["expires_at"] = None
    row["ended_at"] = event.timestamp
    row["reserved_at"] = None


def _queued(row: ListingDocument, event: Allocation.Queued) -> None:
    row["state"] = _QUEUED
    row["queue_deadline"] = event.deadline
    row["waiting_for"] = dict(event.reason)
    row["expires_at"] = None
    row["reserved_at"] = None


def _granted(row: ListingDocument, event: Allocation.Granted) -> None:
    row["state"] = _PENDING
    if event.resources is not None:
        row["resources"] = _resources(event.resources)
    row["workers"] = _workers(row["allocation_id"], event.worker_ports)
    row["servers"] = _servers(event.servers)
    row["expires_at"] = event.expires_at
    row["queue_deadline"] = None
    row["reserved_at"] = event.timestamp


def _preempted(row: ListingDocument, event: Allocation.Preempted) -> None:
    row["state"] = _PREEMPTED
    row["preempted_by"] = event.by
    row["ended_at"] = event.timestamp


def _activated(row: ListingDocument, event: Allocation.Activated) -> None:
    row["state"] = _ACTIVE
    row["activated_at"] = event.timestamp
    row["expires_at"] = event.expires_at
    worker_endpoints = event.worker_endpoints
    for worker in row["workers"]:  # [worker_id, port, endpoint]
        worker[2] = worker_endpoints.get(worker[0])
    server_endpoints = event.server_endpoints
    for server in row["servers"]:  # [name, port, started, endpoint]
        server[3] = server_endpoints.get(server[0])


def _renewed(row: ListingDocument, event: Allocation.Renewed) -> None:
    row["expires_at"] = event.expires_at
    row["renewals"] += 1


def _release_requested(
    row: ListingDocument, event: Allocation.ReleaseRequested
) -> None:
    row["state"] = _RELEASING
    row["release_requested_at"] = event.timestamp


def _released(row: ListingDocument, event: Allocation.Released) -> None:
    row["state"] = _RELEASED
    row["ended_at"] = event.timestamp


def _expired(row: ListingDocument, event: Allocation.Expired) -> None:
    row["state"] = _EXPIRED
    row["ended_at"] = event.timestamp


def _failed(row: ListingDocument, event: Allocation.Failed) -> None:
    row["state"] = _FAILED
    row["error"] = event.error
    row["ended_at"] = event.timestamp


_DOCUMENT_FOLDS: dict[type[Any], Callable[[Any, Any], None]] = {
    Allocation.Rejected: _rejected,
    Allocation.Queued: _queued,
    Allocation.Granted: _granted,
    Allocation.Preempted: _preempted,
    Allocation.Activated: _activated,
    Allocation.Renewed: _renewed,
    Allocation.ReleaseRequested: _release_requested,
    Allocation.Released: _released,
    Allocation.Expired: _expired,
    Allocation.Failed: _failed,
}


def fold_document(
    row: ListingDocument | None, event: Allocation.Event
) -> ListingDocument:
    """Apply one Allocation event other than the request to its row
    (changed in place and returned), as `folds.fold_allocation` does.

    Raises ValueError when there is no row yet (the request comes first).
    """
    if row is None:
        msg = f"{type(event).__qualname__} arrived before the allocation's request"
        raise ValueError(msg)
    row["updated_at"] = event.timestamp
    row["last_actor"] = event.actor
    row["version"] = event.originator_version
    fold = _DOCUMENT_FOLDS.get(type(event))
    if fold is None:
        fold = fold_of(_DOCUMENT_FOLDS, type(event))
    fold(row, event)
    return row


def stored_document(row: ListingDocument) -> dict[str, Any]:
    """The dictionary to store: `allocation_to_dict` of the row's view."""
    stored = row.copy()
    texts = MOMENT_TEXTS
    for name in MOMENTS:
        moment = row[name]
        if moment is not None:
            found = texts.get(id(moment))
            stored[name] = (
                found[1]
                if found is not None and found[0] is moment
                else moment_text(moment)
            )
    return stored
