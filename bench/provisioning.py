"""Item 7: request-to-active latency with the process provisioner, beside the
endpoints-only provisioner in the same run.

Two ledgers on SQLite files in one temporary directory, opened with the
ledger's Python API (`open_service`) and settings whose catalog names the
same MCP server in the same pool: one with the process provisioner (the
server really runs: tests/mcp_test_server.py, behind the ledger's stdio
bridge), one with `provisioner = "endpoints"` (addresses only). The time
measured is `Ledger.request` for one worker and that server, until it
returns the allocation active.

- *warm*: the server already runs (an allocation holds it), so each request
  shares it; the pool has no `worker_command`, so the ledger reserves and
  activates in one transaction (the provisioner's `instant_endpoints`
  answers). Each warm request is checked to be one (its `requested_at` is
  its `activated_at`: one unit of work is one moment);
- *endpoints*: the same cycles on the endpoints-only ledger (an allocation
  holds the server there too), interleaved with warm in rounds;
- *warm, two transactions* (for comparison, not the product's behaviour):
  the process provisioner made to answer None from `instant_endpoints`, so
  each warm request is reserved (pending), provisioned, then activated, as
  every request of the process provisioner was before warm requests became
  one transaction;
- *cold*: the server does not run: each request starts it and waits until
  the official MCP client lists its tools; after the release the clock is
  moved past the idle timeout and the idle-server stopper stops it (process
  gone, port free) before the next cycle. Also, in a full run, with the
  reference `mcp-server-time`.

Releases are not timed. Figures: p50 and p99 of each, and warm / endpoints
(target: p50 within 1.3x), printed and in the result.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.config.apply import apply_catalog
from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from bench.common import (
    BENCH_DIR,
    BenchSettings,
    Result,
    Scale,
    log,
    median,
    now,
    open_bench_service,
    percentile,
    temporary_directory,
)

POOL = "bench-provisioning"
SERVER = "echo"
TEST_SERVER = [sys.executable, str(BENCH_DIR.parent / "tests" / "mcp_test_server.py")]
TIME_SERVER = [sys.executable, "-m", "mcp_server_time"]
IDLE_TIMEOUT_SECONDS = 1
TARGET = 1.3


class TwoTransactions(ProcessProvisioner):
    """For comparison: the process provisioner as it was before warm
    requests became one transaction (`provision` between two, always)."""

    def instant_endpoints(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints | None:
        return None


class SteppingClock:
    """The system clock, which the benchmark can move forward (never back):
    past an idle timeout, without waiting for it."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def catalog(provisioner: str, command: list[str], *, shift: bool = False) -> Catalog:
    """The catalog: the server, in POOL. With `shift`, an empty pool is made
    first, so that POOL's ports differ from those of a ledger without."""
    pools: dict[str, Any] = {"bench-shift": {}} if shift else {}
    pools[POOL] = {}
    return Catalog.model_validate(
        {
            "provisioner": provisioner,
            "mcp_servers": {
                SERVER: {
                    "command": command,
                    "idle_timeout_seconds": IDLE_TIMEOUT_SECONDS,
                }
            },
            "pools": pools,
        }
    )


@contextmanager
def ledger(
    directory: Path,
    provisioner: str,
    command: list[str],
    clock: SteppingClock,
    *,
    two_transactions: bool = False,
) -> Iterator[AllocationService]:
    """A ledger on its own SQLite file whose catalog names the server."""
    entries = catalog(provisioner, command, shift=two_transactions)
    name = provisioner + ("-two-transactions" if two_transactions else "")
    settings = BenchSettings(
        store="sqlite",
        database=directory / f"{name}.db",
        data_directory=directory / f"{name}.d",
        catalog=entries,
        stop_mcp_servers_on_exit=True,
    )
    chosen = (
        TwoTransactions(entries, directory / f"{name}.d", now=clock.now)
        if two_transactions
        else None
    )
    service = open_bench_service(settings, clock=clock, provisioner=chosen)
    try:
        apply_catalog(service.ledger, entries)
        yield service
    finally:
        process = service.ledger.provisioner
        if isinstance(process, ProcessProvisioner):
            process.close(stop_all=True)
        service.close()


REQUEST = AllocationRequest("bench-job", (SERVER,), 1)
HOLDER = AllocationRequest("bench-holder", (SERVER,), 0)


def timed_request(
    service: AllocationService, *, one_transaction: bool | None = None
) -> tuple[float, str]:
    """Seconds from request to active, and the allocation id.

    `one_transaction`: whether the request must have been reserved and
    activated in one transaction (True) or in two (False); None: either.
    Raises RuntimeError when it is not active, or not as required.
    """
    begin = now()
    result = service.ledger.request(REQUEST, pool=POOL)
    took = now() - begin
    allocation = result.allocation
    if allocation.state is not AllocationState.ACTIVE:
        raise RuntimeError(f"request not active: {result}")
    one = allocation.activated_at == allocation.requested_at
    if one_transaction is not None and one != one_transaction:
        raise RuntimeError(
            f"request {allocation.allocation_id} was activated in "
            f"{'one transaction' if one else 'two transactions'}"
        )
    return took, allocation.allocation_id


def cycle(service: AllocationService, *, one_transaction: bool | None = None) -> float:
    took, allocation_id = timed_request(service, one_transaction=one_transaction)
    service.ledger.release(allocation_id)
    return took


def cold_cycle(service: AllocationService, clock: SteppingClock) -> float:
    """Start the server for a request; stop it when idle, before the next."""
    took = cycle(service)
    clock.advance(IDLE_TIMEOUT_SECONDS + 1)
    stopped = service.ledger.stop_idle_servers()
    if [s.name for s in stopped.stopped] != [SERVER] or stopped.errors:
        raise RuntimeError(f"the idle server was not stopped: {stopped}")
    return took


def stats(name: str, samples: list[float]) -> dict[str, Any]:
    return {
        "case": name,
        "samples": len(samples),
        "p50_ms": percentile(samples, 0.5) * 1000,
        "p99_ms": percentile(samples, 0.99) * 1000,
        "max_ms": max(samples) * 1000,
    }


CASES = {"warm": True, "endpoints": True, "two": False}
"""Each interleaved case, and whether its requests are one transaction."""


def run(scale: Scale) -> Result:
    rounds = scale.pick(6, 3)  # a multiple of 3: each case leads as often
    per_round = scale.pick(100, 20)
    cold_cycles = scale.pick(15, 2)
    clock = SteppingClock()
    rows: list[dict[str, Any]] = []
    with (
        temporary_directory() as directory,
        ledger(directory, "process", TEST_SERVER, clock) as process,
        ledger(directory, "endpoints", TEST_SERVER, clock) as endpoints,
        ledger(directory, "process", TEST_SERVER, clock, two_transactions=True) as two,
    ):
        cold = [cold_cycle(process, clock) for _ in range(cold_cycles)]
        log(f"item 7 cold: p50 {percentile(cold, 0.5) * 1000:.0f} ms")

        services = {"warm": process, "endpoints": endpoints, "two": two}
        for case, service in services.items():
            service.ledger.request(HOLDER, pool=POOL)  # the server keeps running
            for _ in range(max(10, per_round // 5)):  # warm up
                cycle(service, one_transaction=CASES[case])
        samples: dict[str, list[float]] = {case: [] for case in services}
        round_ratios: list[float] = []
        for index in range(rounds):
            batches: dict[str, list[float]] = {}
            order = list(services)[index % 3 :] + list(services)[: index % 3]
            for case in order:
                batches[case] = [
                    cycle(services[case], one_transaction=CASES[case])
                    for _ in range(per_round)
                ]
                samples[case] += batches[case]
            round_ratios.append(
                percentile(batches["warm"], 0.5) / percentile(batches["endpoints"], 0.5)
            )
        warm, only = samples["warm"], samples["endpoints"]
    rows += [stats("cold (test server)", cold), stats("warm", warm)]
    rows.append(stats("endpoints only", only))
    rows.append(stats("for comparison: warm in two transactions", samples["two"]))
    if not scale.quick:
        with (
            temporary_directory() as directory,
            ledger(directory, "process", TIME_SERVER, clock) as process,
        ):
            cycles = max(3, cold_cycles // 3)
            timed = [cold_cycle(process, clock) for _ in range(cycles)]
        rows.insert(1, stats("cold (mcp-server-time)", timed))
    endpoints_p50 = percentile(only, 0.5)
    endpoints_p99 = percentile(only, 0.99)
    for row in rows:
        row["over_endpoints_p50"] = row["p50_ms"] / (endpoints_p50 * 1000)
        row["over_endpoints_p99"] = row["p99_ms"] / (endpoints_p99 * 1000)
    warm_ratio = percentile(warm, 0.5) / endpoints_p50
    log(
        f"item 7 warm: p50 {percentile(warm, 0.5) * 1000:.2f} ms, endpoints only "
        f"p50 {endpoints_p50 * 1000:.2f} ms: warm / endpoints only {warm_ratio:.2f} "
        f"(target <= {TARGET}); median of rounds {median(round_ratios):.2f}; "
        f"two transactions {percentile(samples['two'], 0.5) / endpoints_p50:.2f}"
    )
    return {
        "item": 7,
        "title": "Request-to-active latency: process provisioner vs endpoints only",
        "rows": rows,
        "warm_over_endpoints_p50": warm_ratio,
        "warm_over_endpoints_p99": percentile(warm, 0.99) / endpoints_p99,
        "warm_over_endpoints_median_of_rounds": median(round_ratios),
        "two_transactions_over_endpoints_p50": (
            percentile(samples["two"], 0.5) / endpoints_p50
        ),
        "target": f"warm p50 <= {TARGET} x endpoints-only p50",
        "met": warm_ratio <= TARGET,
    }
