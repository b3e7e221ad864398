"""Item 4: the MCP path over streamable HTTP, beside a no-op tool.

The real server (`adapters.mcp.server.http_app`, served by uvicorn through
`serve_http`, on a SQLite file, with the endpoints provisioner) runs in a
process of its own, with one extra tool, `bench_noop`, that returns a
constant: the baseline, registered on the same server and measured in the
same run (starting it and the clients: bench/mcp_server.py; this module
makes the load and measures it). 1, 4 and 16 clients (the official
`mcp.Client`, each holding its own persistent session) call, in turns of a
few seconds each:

- `cycle`: request_resources (one worker, one MCP server) then
  release_resources of what it got;
- `capacity`: get_capacity;
- `mixed`: request_resources, get_capacity, release_resources,
  get_capacity: each query comes after a command, so it folds that
  command's events into the read models first (as a client checking what
  it got would see);
- `noop`: bench_noop.

Each kind takes its turn once per round, in a rotating order, and the
figures add up every round; the time ratio is the median, over the rounds,
of the no-op's rate over the kind's (turns close in time see alike the load
of a shared machine). A call's time is what the client waits for its
answer. Per kind and client count: calls per second (a cycle is two calls),
p50 and p99 per call, the ratios to the no-op (per-call time by
throughput, p50 and p99), and the CPU time the server process and the
client process spent per call (`/proc` and `getrusage`): the client's
share is mostly the SDK checking each result against the tool's output
schema, which grows with the result.

`python -m bench.mcp_overhead serve DATABASE PORT` runs the server alone
(for a profiler: `py-spy record --pid`); `compare BASELINE_FOLDER` measures
the installed code against another copy of the package in the same rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

from bench.common import (
    Result,
    Scale,
    log,
    median,
    now,
    percentile,
    temporary_directory,
)
from bench.mcp_server import (
    NOOP,
    call_checked,
    mcp_client,
    mcp_server_missing,
    serve,
    server_process,
    set_room,
)

KINDS = ("noop", "capacity", "cycle", "mixed")
CLIENT_COUNTS = (1, 4, 16)
TARGET = 1.3


def _cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system, seconds) of process `pid`, or of this one."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Samples:
    """Per-call times (seconds) of one kind, with the time its turns took
    and the CPU seconds the server and the clients spent meanwhile."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self.seconds = 0.0
        self.server_cpu = 0.0
        self.client_cpu = 0.0
        self.rates: list[float] = []
        """Calls per second of each turn, in order."""

    def add(self, name: str, seconds: float) -> None:
        self.calls.setdefault(name, []).append(seconds)

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.calls.values())

    def every(self) -> list[float]:
        return [s for v in self.calls.values() for s in v]


async def _timed(
    client: Any, tool: str, arguments: dict[str, Any], samples: Samples, name: str
) -> Any:
    begin = now()
    result = await call_checked(client, tool, arguments)
    samples.add(name, now() - begin)
    return result


async def _one_call(client: Any, kind: str, job: str, samples: Samples) -> None:
    if kind == "noop":
        await _timed(client, NOOP, {}, samples, NOOP)
    elif kind == "capacity":
        await _timed(client, "get_capacity", {}, samples, "get_capacity")
    else:  # cycle, or mixed: a get_capacity after each command
        asked = {"job_id": job, "mcp_servers": ["filesystem"], "workers": 1}
        made = await _timed(
            client, "request_resources", asked, samples, "request_resources"
        )
        if made["status"] != "active":
            msg = f"request_resources was not granted: {made}"
            raise RuntimeError(msg)
        if kind == "mixed":
            await _timed(client, "get_capacity", {}, samples, "get_capacity")
        await _timed(
            client,
            "release_resources",
            {"allocation_id": made["allocation_id"]},
            samples,
            "release_resources",
        )
        if kind == "mixed":
            await _timed(client, "get_capacity", {}, samples, "get_capacity")


async def _turn(
    clients: list[Any],
    kind: str,
    seconds: float,
    samples: Samples,
    server_pid: int | None = None,
) -> None:
    """Every client calls `kind` over and over for `seconds`."""
    import anyio

    stop_at = now() + seconds
    taken = Samples()

    async def loop(index: int, client: Any) -> None:
        while now() < stop_at:
            await _one_call(client, kind, f"bench-{index}", taken)

    server_before = _cpu_seconds(server_pid) if server_pid else 0.0
    client_before = _cpu_seconds(None)
    begin = now()
    async with anyio.create_task_group() as group:
        for index, client in enumerate(clients):
            group.start_soon(loop, index, client)
    took = now() - begin
    samples.seconds += took
    samples.rates.append(taken.count / took)
    samples.client_cpu += _cpu_seconds(None) - client_before
    if server_pid:
        samples.server_cpu += _cpu_seconds(server_pid) - server_before
    for name, values in taken.calls.items():
        samples.calls.setdefault(name, []).extend(values)


async def _measure(
    servers: list[tuple[str, int]], clients: int, rounds: int, seconds: float
) -> list[dict[str, Samples]]:
    """Each server's samples; `servers`: (MCP URL, pid) of each. The servers
    take turns too, within each round, in a rotating order."""
    async with contextlib.AsyncExitStack() as stack:
        opened = [
            [await stack.enter_async_context(mcp_client(url)) for _ in range(clients)]
            for url, _ in servers
        ]
        for sessions in opened:
            for kind in KINDS:  # warm up every session and path
                await _turn(sessions, kind, min(seconds, 0.5), Samples())
        results = [{kind: Samples() for kind in KINDS} for _ in servers]
        for number in range(rounds):
            order = KINDS[number % len(KINDS) :] + KINDS[: number % len(KINDS)]
            first = number % len(servers)
            for index in [*range(first, len(servers)), *range(first)]:
                for kind in order:
                    await _turn(
                        opened[index],
                        kind,
                        seconds,
                        results[index][kind],
                        servers[index][1],
                    )
        return results


def _row(clients: int, results: dict[str, Samples]) -> dict[str, Any]:
    row: dict[str, Any] = {"clients": clients}
    noop = results["noop"]
    noop_rate = noop.count / noop.seconds
    noop_p50 = percentile(noop.every(), 0.5)
    for kind in KINDS:
        samples = results[kind]
        rate = samples.count / samples.seconds
        row[f"{kind}_calls_per_s"] = rate
        every = samples.every()
        row[f"{kind}_p50_ms"] = percentile(every, 0.5) * 1000
        row[f"{kind}_p99_ms"] = percentile(every, 0.99) * 1000
        row[f"{kind}_server_cpu_us"] = samples.server_cpu / samples.count * 1e6
        row[f"{kind}_client_cpu_us"] = samples.client_cpu / samples.count * 1e6
        if kind != "noop":
            # Each round's no-op turn against the same round's turn of this
            # kind (close in time, so alike in the machine's load); the median.
            row[f"{kind}_time_ratio"] = median(
                [n / k for n, k in zip(noop.rates, samples.rates, strict=True)]
            )
            row[f"{kind}_p50_ratio"] = percentile(every, 0.5) / noop_p50
            row[f"{kind}_p99_ratio"] = percentile(every, 0.99) / percentile(
                noop.every(), 0.99
            )
    for name in ("request_resources", "release_resources"):
        values = results["cycle"].calls.get(name, [])
        row[f"{name}_p50_ms"] = percentile(values, 0.5) * 1000
        row[f"{name}_p99_ms"] = percentile(values, 0.99) * 1000
    after_command = results["mixed"].calls.get("get_capacity", [])
    row["mixed_get_capacity_p50_ms"] = percentile(after_command, 0.5) * 1000
    parts = [f"no-op {noop_rate:.0f} calls/s p50 {row['noop_p50_ms']:.2f} ms"]
    for kind in KINDS[1:]:
        parts.append(
            f"{kind} {row[f'{kind}_calls_per_s']:.0f} calls/s p50 "
            f"{row[f'{kind}_p50_ms']:.2f} ms (x{row[f'{kind}_time_ratio']:.2f}, "
            f"p50 x{row[f'{kind}_p50_ratio']:.2f})"
        )
    cpu = "/".join(
        f"{row[f'{kind}_server_cpu_us']:.0f}+{row[f'{kind}_client_cpu_us']:.0f}"
        for kind in KINDS
    )
    log(
        f"item 4, {clients} client(s): {'; '.join(parts)}; CPU per call, "
        f"server+client, {'/'.join(KINDS)}: {cpu} us"
    )
    return row


def run(scale: Scale, client_counts: tuple[int, ...] = CLIENT_COUNTS) -> Result:
    missing = mcp_server_missing()
    if missing is not None:
        return {
            "item": 4,
            "title": "MCP path",
            "skipped": f"NOT MEASURED YET: {missing}",
        }
    import anyio

    rounds = scale.pick(10, 2)
    seconds = scale.pick(1.0, 0.3)
    rows = []
    with (
        temporary_directory() as directory,
        server_process(directory / "mcp.db") as (
            url,
            process,
        ),
    ):
        anyio.run(set_room, url)
        for clients in client_counts:
            [results] = anyio.run(
                _measure, [(url, process.pid)], clients, rounds, seconds
            )
            rows.append(_row(clients, results))
    ratios = [
        row[f"{kind}_{what}_ratio"]
        for row in rows
        for kind in ("capacity", "cycle", "mixed")
        for what in ("time", "p50")
    ]
    worst = max(ratios)
    return {
        "item": 4,
        "title": (
            "MCP path over streamable HTTP: request+release and get_capacity "
            "vs a no-op tool, 1/4/16 clients"
        ),
        "rows": rows,
        "rounds": rounds,
        "seconds_per_turn": seconds,
        "worst_ratio": worst,
        "target": f"every time and p50 ratio <= {TARGET} x the no-op",
        "met": worst <= TARGET,
    }


def compare(
    baseline: Path, client_counts: tuple[int, ...] = CLIENT_COUNTS
) -> dict[str, Any]:
    """The installed code against the `allocation_ledger` package in the
    folder `baseline` (say, an earlier commit's domain, projections and
    adapters linked under baseline/allocation_ledger/), two servers measured
    in the same rounds, taking turns: each one's rows, and after/before of
    each server's ratios and CPU per call."""
    import anyio

    rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    with (
        temporary_directory() as directory,
        server_process(directory / "before.db", source=baseline) as (old, old_p),
        server_process(directory / "after.db") as (new, new_p),
    ):
        for url in (old, new):
            anyio.run(set_room, url)
        for clients in client_counts:
            before, after = anyio.run(
                _measure, [(old, old_p.pid), (new, new_p.pid)], clients, 10, 1.0
            )
            log("before:")
            rows["before"].append(_row(clients, before))
            log("after:")
            rows["after"].append(_row(clients, after))
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "run":
        counts = tuple(int(n) for n in sys.argv[2:]) or CLIENT_COUNTS
        print(json.dumps(run(Scale(quick=False), counts), indent=2))
        return
    if len(sys.argv) >= 3 and sys.argv[1] == "compare":
        counts = tuple(int(n) for n in sys.argv[3:]) or CLIENT_COUNTS
        print(json.dumps(compare(Path(sys.argv[2]), counts), indent=2))
        return
    print(
        json.dumps(
            {
                "usage": "python -m bench.mcp_overhead serve DATABASE PORT "
                "| run [N...] | compare BASELINE_FOLDER [N...]"
            }
        )
    )


if __name__ == "__main__":
    main()
