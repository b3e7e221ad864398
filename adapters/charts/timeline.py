"""A chart of a pool's reserved against total capacity over time, as SVG."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape
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


WIDTH = 960
PANEL = 180
MARGIN_LEFT = 80
MARGIN_RIGHT = 20
TOP = 50


def render_svg(timeline: Timeline, *, until: datetime | None = None) -> str:
    """Three panels (CPU, memory, workers): reserved filled, total dashed."""
    all_points = [p for series in timeline.points.values() for p in series]
    height = TOP + len(DIMENSIONS) * (PANEL + 40) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{MARGIN_LEFT}" y="22" font-size="16" font-weight="bold">'
        f"Pool {escape(timeline.pool)}: reserved vs. total capacity</text>",
        f'<text x="{MARGIN_LEFT}" y="40" fill="#555">filled: reserved; dashed: '
        "total; ▼ red: rejected request; ● orange: lease ran out (expired)</text>",
    ]
    if not all_points:
        parts.append(
            f'<text x="{MARGIN_LEFT}" y="{TOP + 40}">no events for this pool '
            "in the period</text></svg>"
        )
        return "\n".join(parts)
    start = min(p[0] for p in all_points)
    end = max([until or start, *(p[0] for p in all_points)])
    if until is None:
        end += (end - start) * 0.05  # room to see the last change
    if end <= start:
        end = start + timedelta(seconds=1)
    span = (end - start).total_seconds()
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT

    def x(moment: datetime) -> float:
        return MARGIN_LEFT + plot_width * (moment - start).total_seconds() / span

    for index, (dimension, label, _) in enumerate(DIMENSIONS):
        top = TOP + index * (PANEL + 40) + 20
        series = timeline.points[dimension]
        peak = max([1.0, *(max(r, t) for _, r, t in series)]) * 1.1

        def y(value: float, top: int = top, peak: float = peak) -> float:
            return top + PANEL - PANEL * value / peak

        parts.append(
            f'<text x="{MARGIN_LEFT}" y="{top - 6}" font-weight="bold">'
            f"{escape(label)}</text>"
        )
        parts.append(
            f'<rect x="{MARGIN_LEFT}" y="{top}" width="{plot_width}" '
            f'height="{PANEL}" fill="none" stroke="#ccc"/>'
        )
        for fraction in (0.0, 0.5, 1.0):
            value = peak / 1.1 * fraction
            parts.append(
                f'<text x="{MARGIN_LEFT - 6}" y="{y(value) + 4:.1f}" '
                f'text-anchor="end" fill="#555">{value:g}</text>'
            )
        reserved = _steps([(x(t), y(r)) for t, r, _ in series], x(end))
        area = (
            f"{reserved} L{x(end):.1f},{y(0):.1f} L{x(series[0][0]):.1f},{y(0):.1f} Z"
        )
        parts.append(f'<path d="{area}" fill="#4e79a7" fill-opacity="0.35"/>')
        parts.append(f'<path d="{reserved}" fill="none" stroke="#4e79a7"/>')
        total = _steps([(x(t), y(c)) for t, _, c in series], x(end))
        parts.append(
            f'<path d="{total}" fill="none" stroke="#333" stroke-dasharray="5,4"/>'
        )
        for moment in timeline.rejections:
            px = x(moment)
            parts.append(
                f'<path d="M{px - 4:.1f},{top + 2} L{px + 4:.1f},{top + 2} '
                f'L{px:.1f},{top + 10} Z" fill="#e15759"/>'
            )
        for moment in timeline.expiries:
            parts.append(
                f'<circle cx="{x(moment):.1f}" cy="{top + PANEL - 6}" r="4" '
                'fill="#f28e2b"/>'
            )
    axis_y = TOP + len(DIMENSIONS) * (PANEL + 40) + 5
    for fraction, anchor in ((0.0, "start"), (0.5, "middle"), (1.0, "end")):
        moment = start + timedelta(seconds=span * fraction)
        parts.append(
            f'<text x="{x(moment):.1f}" y="{axis_y}" text-anchor="{anchor}" '
            f'fill="#555">{moment.strftime("%Y-%m-%d %H:%M:%S")}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _steps(points: list[tuple[float, float]], end_x: float) -> str:
    """A step path: each value holds until the next change."""
    path = [f"M{points[0][0]:.1f},{points[0][1]:.1f}"]
    for (_, previous_y), (px, py) in itertools.pairwise(points):
        path.append(f"L{px:.1f},{previous_y:.1f} L{px:.1f},{py:.1f}")
    path.append(f"L{end_x:.1f},{points[-1][1]:.1f}")
    return " ".join(path)
