"""What every benchmark shares: timing, statistics, stores, the machine."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import service as service_module
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.clock import Clock

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"

PG_HOST = os.environ.get("BENCH_POSTGRES_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_POSTGRES_PORT", "5432"))
PG_USER = os.environ.get("BENCH_POSTGRES_USER", "postgres")
PG_DBNAME = os.environ.get("BENCH_POSTGRES_DBNAME", "test")

Result = dict[str, Any]


@dataclass(frozen=True)
class Scale:
    """How big each benchmark is: full, or a quick smoke run."""

    quick: bool

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def now() -> float:
    return time.perf_counter()


def percentile(samples: list[float], fraction: float) -> float:
    """The sample below which `fraction` of the samples lie (nearest rank)."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))
    return ordered[rank]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import eventsourcing

    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "eventsourcing": getattr(eventsourcing, "__version__", "9.5.x"),
        "sqlite": __import__("sqlite3").sqlite_version,
    }


@contextlib.contextmanager
def temporary_directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ledger-bench-") as name:
        yield Path(name)


class BenchSettings(Settings):
    """Settings whose event-store environment takes overrides from BENCH_ES_ENV.

    BENCH_ES_ENV="AGGREGATE_CACHE_FASTFORWARD=n,POSTGRES_PRE_PING=n" runs an
    experiment without changing the code (writer processes inherit it).
    """

    def eventsourcing_env(self) -> dict[str, str]:
        env = super().eventsourcing_env()
        for pair in os.environ.get("BENCH_ES_ENV", "").split(","):
            if "=" in pair:
                key, value = pair.split("=", 1)
                env[key.strip()] = value.strip()
        return env


def sqlite_settings(path: Path) -> Settings:
    return BenchSettings(store="sqlite", database=path)


def postgres_settings(schema: str) -> Settings:
    return BenchSettings(
        store="postgres",
        postgres_host=PG_HOST,
        postgres_port=PG_PORT,
        postgres_user=PG_USER,
        postgres_dbname=PG_DBNAME,
        postgres_schema=schema,
    )


def postgres_available() -> str | None:
    """None when the benchmark PostgreSQL answers, else why not."""
    import psycopg

    try:
        psycopg.connect(
            host=PG_HOST,
            port=PG_PORT,
            user=PG_USER,
            dbname=PG_DBNAME,
            connect_timeout=3,
        ).close()
    except psycopg.Error as error:
        return f"PostgreSQL at {PG_HOST}:{PG_PORT}/{PG_DBNAME} unreachable: {error}"
    return None


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema in the benchmark database, initialised, dropped afterwards."""
    import psycopg

    schema = f"ledger_bench_{uuid.uuid4().hex[:10]}"

    def connect() -> Any:
        return psycopg.connect(
            host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=PG_DBNAME, autocommit=True
        )

    with connect() as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        init = getattr(service_module, "init_database", None)
        if init is not None:
            init(postgres_settings(schema))
        yield schema
    finally:
        with connect() as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def open_bench_service(
    settings: Settings, *, clock: Clock | None = None, **kwargs: Any
) -> AllocationService:
    return open_service(settings, clock=clock, **kwargs)


def timed(function: Callable[[], Any]) -> float:
    start = now()
    function()
    return now() - start


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def run_child(module: str, *arguments: str) -> dict[str, Any]:
    """Run `python -m module arguments...` in a fresh process (so its peak
    RSS is its own) and answer the JSON object on its last line of output."""
    import json
    import subprocess

    completed = subprocess.run(
        [sys.executable, "-m", module, *arguments],
        check=True,
        capture_output=True,
        text=True,
    )
    row: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return row
