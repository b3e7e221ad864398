"""Item 4: the MCP round trip of `get_capacity` beside a no-op tool.

Both tools are on the same server (the ledger's own, built by
adapters.mcp.server, with one extra tool, `bench_noop`, that returns a
constant), called from an `mcp.Client` in memory and over stdio, interleaved.
The ratio get_capacity / no-op is what the ledger adds to a round trip.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from bench.common import (
    BENCH_DIR,
    Result,
    Scale,
    log,
    now,
    open_bench_service,
    percentile,
    sqlite_settings,
    temporary_directory,
)

NOOP = "bench_noop"
TOOLS = ("get_capacity", NOOP)


def mcp_server_missing() -> str | None:
    """None when adapters.mcp.server can be built, else why not."""
    try:
        from allocation_ledger.adapters.mcp.server import stdio_server  # noqa: F401
    except Exception as error:  # noqa: BLE001 - reported as "not measured"
        return f"adapters.mcp.server is not importable: {error!r}"
    return None


def server_with_noop(database: Path) -> Any:
    from allocation_ledger.adapters.mcp.server import stdio_server

    service = open_bench_service(sqlite_settings(database))
    server = stdio_server(service)

    async def bench_noop() -> dict[str, str]:
        """Does nothing: the round-trip baseline."""
        return {"status": "ok"}

    server.add_tool(bench_noop, name=NOOP)
    return server


async def _measure(client: Any, repeats: int) -> dict[str, list[float]]:
    made = await client.call_tool(
        "request_resources", {"job_id": "bench", "mcp_servers": [], "workers": 1}
    )
    if getattr(made, "is_error", False) or getattr(made, "isError", False):
        msg = f"request_resources failed: {made}"
        raise RuntimeError(msg)
    for _ in range(max(10, repeats // 10)):
        for name in TOOLS:
            await client.call_tool(name, {})
    samples: dict[str, list[float]] = {name: [] for name in TOOLS}
    for _ in range(repeats):
        for name in TOOLS:
            begin = now()
            result = await client.call_tool(name, {})
            samples[name].append(now() - begin)
            if getattr(result, "is_error", False) or getattr(result, "isError", False):
                msg = f"{name} failed: {result}"
                raise RuntimeError(msg)
    return samples


def _row(transport: str, samples: dict[str, list[float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"transport": transport}
    for name in TOOLS:
        row[f"{name}_p50_ms"] = percentile(samples[name], 0.5) * 1000
        row[f"{name}_p99_ms"] = percentile(samples[name], 0.99) * 1000
    row["ratio_p50"] = row["get_capacity_p50_ms"] / row[f"{NOOP}_p50_ms"]
    log(
        f"item 4 {transport}: get_capacity p50 {row['get_capacity_p50_ms']:.2f} ms, "
        f"no-op p50 {row[f'{NOOP}_p50_ms']:.2f} ms, ratio {row['ratio_p50']:.2f}"
    )
    return row


def run(scale: Scale) -> Result:
    missing = mcp_server_missing()
    if missing is not None:
        return {
            "item": 4,
            "title": "MCP overhead",
            "skipped": f"NOT MEASURED YET: {missing}",
        }
    import anyio
    from mcp import Client, StdioServerParameters

    repeats = scale.pick(400, 60)
    rows = []
    with temporary_directory() as directory:
        server = server_with_noop(directory / "memory.db")

        async def in_memory() -> dict[str, list[float]]:
            async with Client(server) as client:
                return await _measure(client, repeats)

        rows.append(_row("in memory", anyio.run(in_memory)))
        env = {
            key: value
            for key, value in os.environ.items()
            if key in ("PATH", "PYTHONPATH", "HOME", "LANG")
        }
        env["ALLOCATION_LEDGER_LOG_LEVEL"] = "WARNING"
        params = StdioServerParameters(
            command=sys.executable,
            args=["-m", "bench.mcp_overhead", str(directory / "stdio.db")],
            env=env,
            cwd=str(BENCH_DIR.parent),
        )

        async def over_stdio() -> dict[str, list[float]]:
            async with Client(params) as client:
                return await _measure(client, repeats)

        rows.append(_row("stdio", anyio.run(over_stdio)))
    worst = max(r["ratio_p50"] for r in rows)
    return {
        "item": 4,
        "title": "MCP overhead: get_capacity round trip vs a no-op tool",
        "rows": rows,
        "worst_ratio": worst,
        "target": "get_capacity <= 1.5 x the no-op round trip",
        "met": worst <= 1.5,
    }


def main() -> None:
    """Serve the ledger plus the no-op tool over stdio on the given SQLite file."""
    import anyio

    server = server_with_noop(Path(sys.argv[1]))
    anyio.run(server.run_stdio_async)


if __name__ == "__main__":
    if len(sys.argv) == 2:
        main()
    else:
        print(json.dumps({"usage": "python -m bench.mcp_overhead DATABASE"}))
