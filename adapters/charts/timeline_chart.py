"""The timeline drawn: three panels (CPU cores, memory MB, workers), the
reserved capacity filled and the total dashed, rejected requests and
expired leases marked; as SVG or PNG, with matplotlib (no display needed).
"""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from allocation_ledger.adapters.charts.timeline import DIMENSIONS, Timeline

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ChartFormat = Literal["svg", "png"]
CHART_FORMATS: tuple[ChartFormat, ...] = ("svg", "png")
"""What `render_chart` writes; a chart file's suffix must be one of them."""

RESERVED_COLOUR = "#4e79a7"
TOTAL_COLOUR = "#333333"
REJECTED_COLOUR = "#e15759"
EXPIRED_COLOUR = "#f28e2b"
WIDTH_INCHES, HEIGHT_INCHES, DPI = 9.6, 7.2, 100
"""960 by 720 pixels as PNG."""


def render_chart(
    timeline: Timeline, *, fmt: ChartFormat, until: datetime | None = None
) -> bytes:
    """The chart as an SVG document or PNG image (`fmt`).

    The time axis runs from the first change to `until` (or a little past
    the last change), in UTC. SVG keeps its text as text, so the chart can
    be searched and its labels read.
    """
    if fmt not in CHART_FORMATS:
        msg = f"a chart is written as {' or '.join(CHART_FORMATS)}, not {fmt!r}"
        raise ValueError(msg)
    import matplotlib  # imported when drawing: it takes a while to load

    with matplotlib.rc_context(
        {"svg.fonttype": "none", "svg.hashsalt": "allocation-ledger"}
    ):
        figure = _figure(timeline, until)
        out = io.BytesIO()
        metadata = {"Date": None} if fmt == "svg" else {}
        figure.savefig(out, format=fmt, dpi=DPI, metadata=metadata)
    return out.getvalue()


def _figure(timeline: Timeline, until: datetime | None) -> Figure:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    figure = Figure(figsize=(WIDTH_INCHES, HEIGHT_INCHES), layout="constrained")
    figure.suptitle(
        f"Pool {timeline.pool}: reserved vs. total capacity", fontweight="bold"
    )
    panels = figure.subplots(len(DIMENSIONS), 1, sharex=True)
    points = [p for series in timeline.points.values() for p in series]
    if not points:
        for panel in panels:
            panel.set_axis_off()
        figure.text(0.5, 0.5, "no events for this pool in the period", ha="center")
        return figure
    start = min(p[0] for p in points)
    end = max([until or start, *(p[0] for p in points)])
    if until is None:
        end += (end - start) * 0.05  # room to see the last change
    if end <= start:
        end = start + timedelta(seconds=1)
    for panel, (dimension, label, _) in zip(panels, DIMENSIONS, strict=True):
        series = timeline.points[dimension]
        times = [t for t, _, _ in series] + [end]
        reserved = [r for _, r, _ in series] + [series[-1][1]]
        total = [c for _, _, c in series] + [series[-1][2]]
        peak = max([1.0, *reserved, *total]) * 1.1
        panel.fill_between(
            times, reserved, step="post", color=RESERVED_COLOUR, alpha=0.35
        )
        panel.step(
            times, reserved, where="post", color=RESERVED_COLOUR, label="reserved"
        )
        panel.step(
            times,
            total,
            where="post",
            color=TOTAL_COLOUR,
            linestyle="--",
            label="total",
        )
        if timeline.rejections:
            panel.plot(
                timeline.rejections,
                [peak * 0.97] * len(timeline.rejections),
                "v",
                color=REJECTED_COLOUR,
                label="rejected request",
            )
        if timeline.expiries:
            panel.plot(
                timeline.expiries,
                [peak * 0.03] * len(timeline.expiries),
                "o",
                color=EXPIRED_COLOUR,
                label="lease ran out (expired)",
            )
        panel.set_ylabel(label)
        panel.set_ylim(0, peak)
        panel.set_xlim(start, end)
        panel.grid(True, color="#dddddd")
    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    formatter = ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
    panels[-1].xaxis.set_major_locator(locator)
    panels[-1].xaxis.set_major_formatter(formatter)
    panels[-1].set_xlabel("time (UTC)")
    handles, labels = panels[0].get_legend_handles_labels()  # the same in each
    figure.legend(
        handles, labels, loc="outside lower center", fontsize="small", ncols=4
    )
    return figure
