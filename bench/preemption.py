"""Item 8: choosing preemption victims among many candidates.

Pools of 16, 200 and 2,000 live `low` and `normal` allocations (1 to 3
workers, CPU and memory in proportion, some with their own extra memory),
and a `critical` request short of workers and memory at once. Timed: the
exact rule (`preemption_victims`: lowest highest priority, fewest, youngest)
beside, in the same run, the greedy pass it replaced above 12 candidates
(lowest priority and youngest first until the request fits, then spare any
not needed), which is not exact. At 16 candidates the search of every subset
is timed too. Each answer is checked against the rule where a subset search
can run.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from allocation_ledger.domain.capacity import shortfall
from allocation_ledger.domain.pool_state import Reservation
from allocation_ledger.domain.preemption import (
    preemption_candidates,
    preemption_victims,
)
from allocation_ledger.domain.values import AllocationRequest, Priority, Resources
from bench.common import Result, Scale, log, now, percentile
from tests.pool_view import PoolView

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def scenario(
    candidates: int, seed: int
) -> tuple[PoolView, AllocationRequest, Resources]:
    rng = random.Random(seed)
    reservations = {}
    for i in range(candidates):
        workers = rng.randint(1, 3)
        extra = rng.choice((0, 0, 0, 4096))
        reservations[f"a{i:05d}"] = Reservation(
            f"a{i:05d}",
            Resources(1000 * workers, 2048 * workers + extra, workers),
            worker_ports=(),
            servers=(),
            expires_at=T0 + timedelta(hours=9),
            priority=rng.choice((Priority.LOW, Priority.LOW, Priority.NORMAL)),
            reserved_at=T0 + timedelta(seconds=rng.randint(0, candidates)),
        )
    held = Resources()
    for r in reservations.values():
        held = held + r.resources
    needed = Resources(5000, 14336, 5)  # short of workers and of memory
    pool = PoolView(capacity=held, reservations=reservations)
    request = AllocationRequest("urgent", workers=5, priority=Priority.CRITICAL)
    return pool, request, needed


def greedy(
    pool: PoolView, request: AllocationRequest, needed: Resources
) -> list[Reservation] | None:
    """The rule the exact search replaced above 12 candidates."""
    allowed = preemption_candidates(pool, request, T0, tenant=None)
    allowed.sort(key=lambda r: r.priority.rank)  # stable: youngest first within
    chosen: list[Reservation] = []
    for reservation in allowed:
        if shortfall(pool, request, needed, freeing=chosen) is None:
            break
        chosen.append(reservation)
    if shortfall(pool, request, needed, freeing=chosen) is not None:
        return None
    for reservation in reversed(list(chosen)):
        fewer = [r for r in chosen if r is not reservation]
        if shortfall(pool, request, needed, freeing=fewer) is None:
            chosen = fewer
    return chosen


def every_subset(
    pool: PoolView, request: AllocationRequest, needed: Resources
) -> list[Reservation] | None:
    """The rule by trying every subset (the reference the tests use)."""
    youth = preemption_candidates(pool, request, T0, tenant=None)
    position = {r.allocation_id: i for i, r in enumerate(youth)}
    best: tuple[Any, ...] | None = None
    chosen: list[Reservation] | None = None
    for size in range(1, len(youth) + 1):
        for victims in itertools.combinations(youth, size):
            if shortfall(pool, request, needed, freeing=victims) is not None:
                continue
            key = (
                max(v.priority.rank for v in victims),
                size,
                sorted((position[v.allocation_id] for v in victims), reverse=True),
            )
            if best is None or key < best:
                best, chosen = key, list(victims)
    return chosen


Case = tuple[PoolView, AllocationRequest, Resources]


def _time(
    choose: Callable[[PoolView, AllocationRequest, Resources], object],
    case: Case,
    repeats: int,
) -> list[float]:
    """Milliseconds of each of `repeats` calls of `choose` on `case`."""
    samples = []
    for _ in range(repeats):
        begin = now()
        choose(*case)
        samples.append((now() - begin) * 1000)
    return samples


def _exact(
    pool: PoolView, request: AllocationRequest, needed: Resources
) -> list[Reservation] | None:
    return preemption_victims(pool, request, needed, now=T0, tenant=None)


def _ids(victims: Sequence[Reservation] | None) -> list[str] | None:
    return None if victims is None else sorted(v.allocation_id for v in victims)


def run(scale: Scale) -> Result:
    rows = []
    ratios = {}
    for candidates in scale.pick((16, 200, 2000), (16, 200)):
        exact_ms: list[float] = []
        greedy_ms: list[float] = []
        subsets_ms: list[float] = []
        fewer = 0
        seeds = scale.pick(20, 5)
        for seed in range(seeds):
            pool, request, needed = scenario(candidates, seed)
            exact = preemption_victims(pool, request, needed, now=T0, tenant=None)
            rough = greedy(pool, request, needed)
            assert exact is not None and rough is not None
            fewer += len(exact) < len(rough)
            if candidates <= 16:
                reference = every_subset(pool, request, needed)
                assert _ids(exact) == _ids(reference), (seed, exact, reference)
                subsets_ms += _time(every_subset, (pool, request, needed), 1)
            repeats = scale.pick(10, 3)
            exact_ms += _time(_exact, (pool, request, needed), repeats)
            greedy_ms += _time(greedy, (pool, request, needed), repeats)
        row = {
            "candidates": candidates,
            "exact_p50_ms": percentile(exact_ms, 0.5),
            "exact_p99_ms": percentile(exact_ms, 0.99),
            "greedy_p50_ms": percentile(greedy_ms, 0.5),
            "exact_over_greedy": percentile(exact_ms, 0.5) / percentile(greedy_ms, 0.5),
            "pools_where_exact_takes_fewer": f"{fewer}/{seeds}",
        }
        if subsets_ms:
            row["every_subset_p50_ms"] = percentile(subsets_ms, 0.5)
        rows.append(row)
        ratios[f"exact/greedy at {candidates}"] = row["exact_over_greedy"]
        log(f"preemption {candidates}: {row}")
    return {
        "item": 8,
        "title": "preemption victims: exact rule vs the greedy pass, same run",
        "rows": rows,
        "ratios": ratios,
    }
