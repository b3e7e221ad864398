"""Generated event logs: real events from the domain aggregates, inserted fast.

The events are made by the Pool and Allocation aggregates themselves (the
same calls the Ledger makes), turned into stored events by the Ledger's own
mapper and written through its recorder in big transactions. Logs are cached
in bench/.cache (git-ignored) and made again when missing.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.registry import PoolRegistry
from allocation_ledger.domain.values import (
    INSUFFICIENT_CAPACITY,
    AllocationRequest,
    Dimension,
    Priority,
    Rejection,
    Resources,
)
from bench.common import CACHE_DIR, log, now

GENERATOR_VERSION = 1
INSERT_BATCH = 50_000
SERVERS = ("github", "filesystem", "search", "slack", "browser", "postgres")
PRIORITIES = tuple(Priority)


@dataclass(frozen=True)
class LogInfo:
    path: Path
    events: int
    allocations: int
    live: list[str]
    sample: list[str]

    @classmethod
    def load(cls, path: Path) -> LogInfo | None:
        meta = path.with_suffix(".json")
        if not path.exists() or not meta.exists():
            return None
        data = json.loads(meta.read_text())
        return cls(
            path, data["events"], data["allocations"], data["live"], data["sample"]
        )


class _Writer:
    """Collects the events of each 'transaction' and inserts them in big batches."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.pending: list[Any] = []
        self.count = 0

    def save(self, *aggregates: Any) -> None:
        for aggregate in aggregates:
            self.pending.extend(aggregate.collect_events())
        if len(self.pending) >= INSERT_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        mapper = self.ledger.mapper
        stored = [mapper.to_stored_event(e) for e in self.pending]
        self.ledger.recorder.insert_events(stored)
        self.count += len(stored)
        self.pending.clear()


def generate(
    path: Path,
    *,
    allocations: int | None = None,
    events: int | None = None,
    window: int = 24,
    live_at_end: int = 5,
    seed: int = 7,
    live_only: bool = False,
) -> LogInfo:
    """Write a log on a new SQLite file: `allocations` requests (or about `events`).

    Allocations are requested, activated, sometimes renewed, then released or
    expired with about `window` live at a time, `live_at_end` left live at the
    end. With `live_only`, every allocation is a request for no workers and
    no servers, and all stay live.
    """
    if path.exists():
        path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    rng = random.Random(seed)
    clock = ManualClock()
    settings = Settings(store="sqlite", database=path)
    ledger = Ledger(
        settings.eventsourcing_env(), clock=clock, provisioner=LocalProvisioner()
    )
    provisioner = LocalProvisioner()
    writer = _Writer(ledger)
    at = clock.now()
    registry = PoolRegistry.open(at=at, actor="local")
    registry.register("default", at=at, actor="local")
    pool = Pool.create(
        "default",
        PoolSettings(capacity=Resources(400_000, 100_000_000, 400)),
        at=at,
        actor="local",
    )
    writer.save(registry, pool)
    # Requests are validated once and reused: validation is not what is measured.
    requests = [
        AllocationRequest(
            job_id=f"job-{rng.randrange(2000)}",
            servers=tuple(rng.sample(SERVERS, rng.choice((0, 0, 1, 1, 2)))),
            workers=rng.choice((0, 1, 1, 2)),
            priority=rng.choice(PRIORITIES),
            ttl_seconds=rng.choice((60, 3600, 3600, 7200)),
            metadata={"batch": index % 7} if rng.random() < 0.3 else {},
        )
        for index in range(1000)
    ]
    if live_only:
        requests = [AllocationRequest("bench-memory", (), 0)]
    live: dict[str, Allocation] = {}
    made = 0
    sample: list[str] = []
    started = now()

    def produced() -> int:
        return writer.count + len(writer.pending)

    def done() -> bool:
        if allocations is not None:
            return made >= allocations
        assert events is not None
        return produced() >= events

    def finish(allocation: Allocation) -> None:
        at = clock.now()
        actor = f"agent-{rng.randrange(50)}"
        if allocation.request.ttl_seconds == 60 and allocation.is_due(at):
            allocation.expire(at=at, actor="system:sweeper")
            pool.free(
                allocation.allocation_id, "expired", at=at, actor="system:sweeper"
            )
        else:
            allocation.request_release(at=at, actor=actor)
            allocation.release(at=at, actor=actor)
            pool.free(allocation.allocation_id, "released", at=at, actor=actor)
        writer.save(allocation, pool)

    while not done():
        clock.advance(rng.choice((1, 2, 5, 10)))
        at = clock.now()
        actor = f"agent-{rng.randrange(50)}"
        allocation_id = f"alloc-{rng.getrandbits(48):012x}"
        request = rng.choice(requests)
        resources = pool.settings.workers_for(request)
        made += 1
        if len(sample) < 2000 or rng.random() < 2000 / made:
            if len(sample) >= 2000:
                sample[rng.randrange(2000)] = allocation_id
            else:
                sample.append(allocation_id)
        if not live_only and rng.random() < 0.03:
            rejected = Allocation.rejected(
                allocation_id,
                pool="default",
                request=request,
                request_id=None,
                resources=resources,
                rejection=Rejection(INSUFFICIENT_CAPACITY, Dimension.WORKERS, 5, 0),
                at=at,
                actor=actor,
            )
            writer.save(rejected)
            continue
        expires_at = at + timedelta(seconds=request.ttl_seconds)
        ports = pool.reserve(
            allocation_id, request, expires_at=expires_at, at=at, actor=actor
        )
        allocation = Allocation.requested(
            allocation_id,
            pool="default",
            request=request,
            request_id=None,
            resources=resources,
            worker_ports=ports.worker_ports,
            servers=ports.servers,
            expires_at=expires_at,
            at=at,
            actor=actor,
        )
        writer.save(allocation, pool)
        endpoints = provisioner.provision(
            allocation_id, allocation.workers, allocation.servers, pool="default"
        )
        allocation.activate(endpoints, at=at, actor=actor)
        writer.save(allocation)
        if not live_only and rng.random() < 0.08:
            expires = allocation.renew(None, at=at, actor=actor)
            pool.extend_lease(allocation_id, expires, at=at, actor=actor)
            writer.save(allocation, pool)
        live[allocation_id] = allocation
        if live_only:
            continue
        if len(live) > window:
            finish(live.pop(rng.choice(list(live))))
        if made % 50 == 0:
            pool.stop_idle_servers(at, actor="system:sweeper")
            writer.save(pool)
    ending = 0 if live_only else max(0, len(live) - live_at_end)
    for allocation_id in list(live)[:ending]:
        finish(live.pop(allocation_id))
    writer.flush()
    ledger.close()
    info = LogInfo(path, writer.count, made, sorted(live), sample)
    log(
        f"generated {info.events:,} events ({made:,} allocations) in "
        f"{now() - started:.1f}s -> {path.name}"
    )
    return info


def cached_log(
    name: str,
    *,
    allocations: int | None = None,
    events: int | None = None,
    live_at_end: int = 5,
    live_only: bool = False,
) -> LogInfo:
    """The cached log of this size, generated first if missing."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    size = f"a{allocations}" if allocations is not None else f"e{events}"
    size += "-live" if live_only else ""
    path = CACHE_DIR / f"{name}-v{GENERATOR_VERSION}-{size}.db"
    info = LogInfo.load(path)
    if info is not None:
        return info
    temporary = path.with_name(path.name + ".tmp")
    made = generate(
        temporary,
        allocations=allocations,
        events=events,
        live_at_end=live_at_end,
        live_only=live_only,
    )
    os.replace(temporary, path)
    info = LogInfo(path, made.events, made.allocations, made.live, made.sample)
    path.with_suffix(".json").write_text(
        json.dumps(
            {
                "events": info.events,
                "allocations": info.allocations,
                "live": info.live,
                "sample": info.sample,
                "generator_version": GENERATOR_VERSION,
            }
        )
    )
    return info
