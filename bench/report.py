"""Results as markdown: key figures (with before/after), then each item."""

from __future__ import annotations

from typing import Any

Figure = tuple[str, str, float | None, str]  # key, label, value, format


def _get(data: dict[str, Any], *path: Any) -> Any:
    for key in path:
        if isinstance(data, dict):
            data = data.get(key)  # type: ignore[assignment]
        elif isinstance(data, list) and isinstance(key, int) and key < len(data):
            data = data[key]
        else:
            return None
    return data


def figures(results: dict[str, Any]) -> list[Figure]:
    items = results.get("items", {})
    out: list[Figure] = []
    for row in _get(items, "1", "rows") or []:
        store = row.get("store")
        if "skipped" in row:
            continue
        out += [
            (
                f"1.{store}.ledger",
                f"1 {store}: ledger cycles/s",
                row["ledger_cycles_per_s"],
                ".0f",
            ),
            (
                f"1.{store}.floor",
                f"1 {store}: floor cycles/s",
                row["floor_cycles_per_s"],
                ".0f",
            ),
            (
                f"1.{store}.ratio",
                f"1 {store}: ledger/floor time (≤ 1.5)",
                row["ledger_over_floor"],
                ".2f",
            ),
        ]
    two = items.get("2") or {}
    if "rebuild_events_per_s" in two:
        out += [
            ("2.raw", "2 raw read events/s", two["raw_read_events_per_s"], ",.0f"),
            (
                "2.decode",
                "2 read + decode events/s",
                two["read_decode_events_per_s"],
                ",.0f",
            ),
            (
                "2.rebuild",
                "2 rebuild events/s (≥ 100,000)",
                two["rebuild_events_per_s"],
                ",.0f",
            ),
            ("2.ratio", "2 rebuild / raw read (≥ 0.5)", two["rebuild_over_raw"], ".2f"),
            (
                "2.ratio.cpu",
                "2 rebuild / raw read, in CPU time",
                two.get("rebuild_over_raw_cpu"),
                ".2f",
            ),
        ]
    three = items.get("3") or {}
    for row in three.get("rows") or []:
        size = row["allocations"]
        for query in ("get_capacity", "get_allocation", "list_allocations_active"):
            out.append(
                (
                    f"3.{query}.{size}",
                    f"3 {query} p50 ms, {size:,} allocations",
                    row[f"{query}_p50_ms"],
                    ".3f",
                )
            )
    for key, value in (three.get("ratios") or {}).items():
        if key.endswith("_p50"):
            label = three.get("ratio_label", "")
            out.append((f"3.ratio.{key}", f"3 {key} {label} (≤ 1.5)", value, ".2f"))
    for row in _get(items, "4", "rows") or []:
        if "clients" not in row:  # the former item: in memory and stdio
            continue
        n = row["clients"]
        out += [
            (
                f"4.{n}.noop",
                f"4 {n} client(s): no-op calls/s",
                row["noop_calls_per_s"],
                ".0f",
            ),
            (
                f"4.{n}.noop.cpu",
                f"4 {n} client(s): no-op server CPU µs per call",
                row.get("noop_server_cpu_us"),
                ".0f",
            ),
        ]
        for kind, name in (
            ("capacity", "get_capacity"),
            ("cycle", "request+release"),
            ("mixed", "request, get_capacity, release, get_capacity"),
        ):
            if f"{kind}_calls_per_s" not in row:
                continue
            out += [
                (
                    f"4.{n}.{kind}.rate",
                    f"4 {n} client(s): {name} calls/s",
                    row[f"{kind}_calls_per_s"],
                    ".0f",
                ),
                (
                    f"4.{n}.{kind}.p50",
                    f"4 {n} client(s): {name} p50 ms",
                    row[f"{kind}_p50_ms"],
                    ".2f",
                ),
                (
                    f"4.{n}.{kind}.time_ratio",
                    f"4 {n} client(s): {name} / no-op, time per call (≤ 1.3)",
                    row[f"{kind}_time_ratio"],
                    ".2f",
                ),
                (
                    f"4.{n}.{kind}.p50_ratio",
                    f"4 {n} client(s): {name} / no-op, p50 (≤ 1.3)",
                    row[f"{kind}_p50_ratio"],
                    ".2f",
                ),
                (
                    f"4.{n}.{kind}.cpu",
                    f"4 {n} client(s): {name} server CPU µs per call",
                    row.get(f"{kind}_server_cpu_us"),
                    ".0f",
                ),
            ]
    for row in _get(items, "5", "rows") or []:
        n, lock = row["writers"], row.get("writer_lock", False)
        how = "with the writers' lock" if lock else "without it"
        key = f"5.{n}" + ("" if lock else ".unlocked")
        out += [
            (
                f"{key}.rate",
                f"5 {n} writer(s), {how}: cycles/s",
                row["cycles_per_s"],
                ".1f",
            ),
            (
                f"{key}.conflicts",
                f"5 {n} writer(s), {how}: conflicts/command",
                row["conflicts_per_command"],
                ".2f",
            ),
            (
                f"{key}.ratio",
                f"5 {n} writer(s) / 1 writer, {how} (4: ≥ 1.0)",
                row["over_one_writer"],
                ".2f",
            ),
        ]
    for row in _get(items, "10", "rows") or []:
        store, n = row["store"], row["callers"]
        how = "group commit" if row["group_commit"] else "one commit each"
        key = f"10.{store}.{n}.{'gc' if row['group_commit'] else 'each'}"
        out += [
            (
                f"{key}.rate",
                f"10 {store}, {n} caller(s), {how}: cycles/s",
                row["cycles_per_s"],
                ".0f",
            ),
            (
                f"{key}.ratio",
                f"10 {store}, {n} caller(s) / 1, {how} (16, group commit: ≥ 3)",
                row["over_one_caller"],
                ".2f",
            ),
            (
                f"{key}.batch",
                f"10 {store}, {n} caller(s), {how}: commands per commit",
                row["commands_per_batch"],
                ".1f",
            ),
        ]
    six = _get(items, "6", "row")
    if six:
        n = six["live_allocations"]
        out += [
            ("6.peak", f"6 peak RSS MiB, {n:,} live", six["peak_rss_mib"], ".0f"),
            (
                "6.baseline",
                "6 RSS MiB before the requests",
                six["baseline_peak_rss_mib"],
                ".0f",
            ),
            (
                "6.per",
                "6 bytes per live allocation",
                six["bytes_per_live_allocation"],
                ",.0f",
            ),
            (
                "6.rate",
                "6 requests/s with that many live",
                six["requests_per_s"],
                ".0f",
            ),
            (
                "6.first",
                "6 first request s (loads the pool)",
                six["first_request_seconds"],
                ".2f",
            ),
        ]
        again = six.get("restart")
        if again:
            out += [
                (
                    "6.restart.peak",
                    "6 restart: peak RSS MiB",
                    again["peak_rss_mib"],
                    ".0f",
                ),
                (
                    "6.restart.first",
                    "6 restart: first request s",
                    again["first_request_seconds"],
                    ".2f",
                ),
            ]
    seven = items.get("7") or {}
    for row in seven.get("rows") or []:
        case = row["case"]
        for key in ("p50", "p99"):
            label = f"7 {case}: request-to-active {key} ms"
            out.append((f"7.{case}.{key}", label, row[f"{key}_ms"], ".2f"))
    if "warm_over_endpoints_p50" in seven:
        out.append(
            (
                "7.ratio",
                "7 warm / endpoints only, p50 (≤ 1.3)",
                seven["warm_over_endpoints_p50"],
                ".2f",
            )
        )
    out += _audit_figures(items.get("9") or {})
    return out


def _audit_figures(nine: dict[str, Any]) -> list[Figure]:
    """Item 9: each audit command's time, rate against the raw read, and
    peak RSS, at each size of log."""
    out: list[Figure] = []
    for size in nine.get("sizes") or []:
        events = size["events"]
        for command, row in size["commands"].items():
            key = f"9.{command}.{events}"
            label = f"9 {command}, {events:,} events"
            out += [
                (f"{key}.s", f"{label}: s", row["seconds"], ".1f"),
                (f"{key}.peak", f"{label}: peak RSS MiB", row["peak_rss_mib"], ".0f"),
            ]
            if command != "raw":
                out += [
                    (
                        f"{key}.ratio",
                        f"{label}: / raw read",
                        row["over_raw_read"],
                        ".2f",
                    ),
                    (
                        f"{key}.ratio.cpu",
                        f"{label}: / raw read, in CPU time",
                        row.get("cpu_over_raw_read"),
                        ".2f",
                    ),
                ]
    return out


def _fmt(value: float | None, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _targets(results: dict[str, Any]) -> str:
    rows = []
    for key in sorted(results.get("items", {})):
        item = results["items"][key]
        title = item.get("title", f"item {key}")
        if "skipped" in item:
            rows.append([key, title, "-", "not measured: " + item["skipped"]])
        elif "error" in item:
            rows.append([key, title, "-", "error: " + item["error"]])
        elif "met" in item:
            verdict = "met" if item["met"] else "NOT met"
            if results.get("quick"):
                verdict += " (quick run: one short round, not a verdict)"
            rows.append([key, title, item.get("target", ""), verdict])
        else:
            rows.append([key, title, item.get("target", ""), "reported"])
    return _table(["item", "what", "target", "result"], rows)


def markdown(results: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    m = results.get("machine", {})
    parts = [
        f"# Benchmark results: {results.get('label')}"
        + (" (quick)" if results.get("quick") else ""),
        "",
        f"Run {results.get('started')}, {results.get('wall_seconds', 0):.0f} s. "
        f"Machine: {m.get('nproc')} x {m.get('cpu')}, Python {m.get('python')}, "
        f"SQLite {m.get('sqlite')}, {m.get('platform')}.",
        "",
        "## Targets",
        "",
        _targets(results),
        "## Key figures",
        "",
    ]
    now_figures = figures(results)
    if before is not None:
        then = {key: value for key, _, value, _ in figures(before)}
        rows = []
        for key, label, value, fmt in now_figures:
            old = then.get(key)
            change = (
                f"{value / old:.2f}x" if old and value is not None and old != 0 else "-"
            )
            rows.append([label, _fmt(old, fmt), _fmt(value, fmt), change])
        parts.append(
            _table(
                ["figure", f"before ({before.get('label')})", "after", "after/before"],
                rows,
            )
        )
    else:
        parts.append(
            _table(
                ["figure", "value"],
                [[label, _fmt(v, f)] for _, label, v, f in now_figures],
            )
        )
    parts += ["", "## Details", ""]
    for key in sorted(results.get("items", {})):
        item = results["items"][key]
        parts.append(f"### {key}. {item.get('title', '')}")
        parts.append("")
        details = {
            k: v
            for k, v in item.items()
            if k not in ("rows", "title", "item") and not isinstance(v, dict | list)
        }
        for k, v in details.items():
            parts.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
        table: list[dict[str, Any]] = list(item.get("rows") or [])
        if "row" in item:
            first = {k: v for k, v in item["row"].items() if k != "restart"}
            table = [{"start": "first", **first}]
            if "restart" in item["row"]:
                table.append({"start": "restart", **item["row"]["restart"]})
        if table:
            header = list(dict.fromkeys(k for row in table for k in row))
            body = [
                [
                    (
                        f"{row.get(k):.4g}"
                        if isinstance(row.get(k), float)
                        else str(row.get(k, ""))
                    )
                    for k in header
                ]
                for row in table
            ]
            parts.append("")
            parts.append(_table(header, body))
        for name in ("ratios", "check"):
            if isinstance(item.get(name), dict):
                parts.append(
                    f"- {name}: "
                    + ", ".join(
                        f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in item[name].items()
                    )
                )
        parts.append("")
    return "\n".join(parts) + "\n"
