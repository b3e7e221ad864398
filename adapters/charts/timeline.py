"""A pool's reserved against total capacity over time, collected from the
log (the chart is drawn by timeline_chart.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.values import MILLICORES_PER_CORE, Dimension, Resources
from allocation_ledger.projections.catchup import (
    Batch,
    Decode,
    NotificationLog,
    Progress,
    fold_event,
)
from allocation_ledger.projections.replay import logged_events
from allocation_ledger.projections.store import InMemoryReadModels

DIMENSIONS = (
    (Dimension.CPU, "CPU (cores)", MILLICORES_PER_CORE),
    (Dimension.MEMORY, "memory (MB)", 1),
    (Dimension.WORKERS, "workers", 1),
)


@dataclass
class Timeline:
    """A pool's reserved and total capacity over time, with its expiries and
    rejections.

    Reserved capacity is charted as usage bills it (projections/usage.py):
    from the reservation (never the time a request waited in the queue) to
    the release, preemption or failure, and for an expired lease to the
    lease's end, not to the sweep that noticed it later (the capacity of a
    lease that ran out is given to the next request that needs it, so it is
    free from then on). The area under the reserved line is the pool's
    billed usage.
    """

    pool: str
    # (time, reserved, total) per dimension, at every change
    points: dict[Dimension, list[tuple[datetime, float, float]]] = field(
        default_factory=lambda: {d: [] for d, _, _ in DIMENSIONS}
    )
    expiries: list[datetime] = field(default_factory=list)
    rejections: list[datetime] = field(default_factory=list)


@dataclass(frozen=True)
class _Change:
    """What one pool event does to the chart, at the moment it takes effect."""

    at: datetime
    position: int
    reserved: Resources = field(default_factory=Resources)
    total: Resources | None = None


def collect(
    log: NotificationLog,
    decode: Decode,
    pool: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    progress: Progress | None = None,
) -> Timeline:
    """Replay the log with the live folds, noting each change to the pool."""
    timeline = Timeline(pool)
    batch = Batch()
    empty = InMemoryReadModels()
    changes: list[_Change] = []
    leases: dict[str, UUID] = {}  # live reservations: allocation id -> aggregate
    for position, event in logged_events(log, decode, progress=progress):
        moment = getattr(event, "timestamp", None)
        if not isinstance(moment, datetime):
            continue
        # Past `until`, events matter only if they expire a lease that ended
        # by then; stop once no live reservation's lease did.
        if (
            until is not None
            and moment > until
            and not _lease_ended_by(batch, leases, until)
        ):
            break
        fold_event(batch, event, position, empty)
        if isinstance(event, Allocation.Rejected):
            view = batch.allocations.get(event.originator_id)
            if view is not None and view.pool == pool and _inside(moment, since):
                timeline.rejections.append(moment)
        if not isinstance(event, Pool.Event):
            continue
        capacity = batch.capacities.get(event.originator_id)
        if capacity is None or capacity.pool != pool:
            continue
        if isinstance(event, Pool.Reserved):
            leases[event.allocation_id] = allocation_uuid(event.allocation_id)
            changes.append(
                _Change(moment, position, Resources.from_dict(event.resources))
            )
        elif isinstance(event, Pool.Freed):
            key = leases.pop(event.allocation_id, None)
            freed_at = moment
            if event.outcome == "expired":
                lease = batch.allocations.get(key) if key is not None else None
                if lease is not None and lease.expires_at is not None:
                    freed_at = min(moment, lease.expires_at)
                if _inside(freed_at, since) and (until is None or freed_at <= until):
                    timeline.expiries.append(freed_at)
            changes.append(
                _Change(
                    freed_at,
                    position,
                    Resources() - Resources.from_dict(event.resources),
                )
            )
        elif isinstance(event, Pool.ServerStarted | Pool.ServerCharged):
            if event.cost is not None:  # an instance's cost, held while it runs
                changes.append(
                    _Change(moment, position, Resources.from_dict(event.cost))
                )
        elif isinstance(event, Pool.ServerStopped):
            if event.cost is not None:
                changes.append(
                    _Change(
                        moment,
                        position,
                        Resources() - Resources.from_dict(event.cost),
                    )
                )
        elif isinstance(event, Pool.Created | Pool.CapacityChanged):
            changes.append(_Change(moment, position, total=capacity.total))
    _chart(timeline, changes, since, until)
    timeline.expiries.sort()
    return timeline


def _lease_ended_by(batch: Batch, leases: dict[str, UUID], until: datetime) -> bool:
    """Whether a live reservation's lease ended by `until` (its expiry is to come)."""
    for key in leases.values():
        view = batch.allocations.get(key)
        if (
            view is not None
            and view.expires_at is not None
            and view.expires_at <= until
        ):
            return True
    return False


def _chart(
    timeline: Timeline,
    changes: list[_Change],
    since: datetime | None,
    until: datetime | None,
) -> None:
    """The changes in time order, summed into points (one per moment)."""
    reserved = Resources()
    total = Resources()
    for change in sorted(changes, key=lambda c: (c.at, c.position)):
        if until is not None and change.at > until:
            break
        reserved = reserved + change.reserved
        if change.total is not None:
            total = change.total
        for dimension, _, scale in DIMENSIONS:
            series = timeline.points[dimension]
            point = (
                max(change.at, since) if since is not None else change.at,
                reserved.amount(dimension) / scale,
                total.amount(dimension) / scale,
            )
            # One unit of work writes several events at one moment: keep
            # only where the pool ended up, not the steps in between.
            if series and (series[-1][0] == point[0]):
                series[-1] = point
            else:
                series.append(point)


def _inside(moment: datetime, since: datetime | None) -> bool:
    return since is None or moment >= since
