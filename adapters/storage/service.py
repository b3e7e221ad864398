"""Wiring: a Ledger, its read models and their catch-up, on the chosen store."""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.caught_up_reads import CaughtUpReads
from allocation_ledger.adapters.storage.event_log import (
    EventDecoder,
    SQLiteNotificationLog,
)
from allocation_ledger.adapters.storage.ledger_file import (
    DatabaseError,
    LedgerMissingError,
    check_sqlite_file,
)
from allocation_ledger.adapters.storage.server_lock import ServerLock
from allocation_ledger.adapters.storage.sql_dialects import (
    PostgresDialect,
    SQLiteDialect,
)
from allocation_ledger.adapters.storage.sql_read_models import SQLReadModels
from allocation_ledger.adapters.storage.sql_rows import SCHEMA_VERSION
from allocation_ledger.adapters.storage.store_health import EVENTS_TABLE, StoreProbe
from allocation_ledger.adapters.storage.system_clock import (
    SystemClock,
    log_clock_behind,
)
from allocation_ledger.adapters.storage.write_journal import (
    JournaledLedger,
    WriteJournal,
)
from allocation_ledger.adapters.storage.writer_lock import PostgresWriterLock
from allocation_ledger.domain.clock import Clock
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.provisioner import Provisioner
from allocation_ledger.domain.values import AllocationState
from allocation_ledger.projections.catchup import NotificationLog, Projector
from allocation_ledger.projections.queries import ReadModels
from allocation_ledger.projections.store import (
    InMemoryReadModels,
    ListingQuery,
    ReadModelStore,
)

logger = logging.getLogger(__name__)


__all__ = ["DatabaseError", "LedgerMissingError"]


@dataclass
class AllocationService:
    """Everything a running ledger needs: commands, read models, catch-up;
    `writes`, what each command wrote (write_journal.py); `probe`, a check
    of the store from scratch (store_health.py)."""

    settings: Settings
    ledger: Ledger
    projector: Projector
    read_models: ReadModels
    store: ReadModelStore
    writes: WriteJournal
    probe: StoreProbe
    _closers: tuple[Callable[[], None], ...] = ()
    read_only: bool = False
    """Opened by `reader.open_reader`: nothing is written."""
    caught_up_reads: CaughtUpReads | None = None
    """On a SQLite file: the read models read without catching up and
    without waiting, for queries that may run on the server's event loop
    (caught_up_reads.py); None on other stores."""

    def close(self) -> None:
        for close in self._closers:
            close()


def open_service(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    provisioner: Provisioner | None = None,
    new_allocation_id: Callable[[], str] | None = None,
    create_tables: bool | None = None,
) -> AllocationService:
    """Open the ledger on the configured store.

    SQLite and memory create their tables on first use. PostgreSQL is shared
    by several processes, so its tables are created once, by `init_database`
    (`allocation-ledger init-db`); opening an uninitialised database fails
    with a DatabaseError that says so, instead of racing to create them.
    Read-model tables of an older layout are replaced and rebuilt from the
    event log before the service is returned (sql_read_models.py).

    A SQLite file may be created, never its directory: a path that cannot
    be a ledger file raises DatabaseError naming it (ledger_file.py).
    """
    settings = settings or Settings()
    if create_tables is None:
        create_tables = settings.store != "postgres"
    if settings.store == "sqlite":
        check_sqlite_file(settings.database, must_exist=False)
    if settings.store == "postgres":
        _check_postgres(settings, initialised=not create_tables)
    extra: dict[str, Any] = {}
    if new_allocation_id is not None:
        extra["new_allocation_id"] = new_allocation_id
    env = settings.eventsourcing_env()
    env["CREATE_TABLE"] = "y" if create_tables else "n"
    clock = clock or SystemClock()
    closers: list[Callable[[], None]] = []
    server_lock: ServerLock | None = None
    if provisioner is None:
        server_lock = _server_lock(settings, closers)
        provisioner = _configured_provisioner(settings, clock, closers)
    writes = WriteJournal()
    ledger = JournaledLedger(
        env,
        journal=writes,
        clock=clock,
        provisioner=provisioner,
        pause=time.sleep,
        jitter=random.random,
        on_clock_behind=log_clock_behind,
        lock_timeout=settings.store_timeout_seconds,
        **extra,
    )
    if settings.store == "postgres":
        # With the servers' lock, the writers' lock is taken only while
        # other servers serve the ledger; without it (a provisioner given
        # here), always.
        writer_lock = PostgresWriterLock(
            settings.postgres_conninfo(),
            settings.postgres_schema or "public",
            others=None if server_lock is None else server_lock.others_serve,
        )
        ledger.writer_lock = writer_lock
        closers.append(writer_lock.close)
    if isinstance(provisioner, ProcessProvisioner):
        provisioner.connect(ledger)
    store: ReadModelStore
    closers.append(ledger.close)
    replaced = False
    if settings.store == "memory":
        store = InMemoryReadModels()
    else:
        dialect: SQLiteDialect | PostgresDialect
        if settings.store == "sqlite":
            dialect = SQLiteDialect(str(settings.database))
        else:
            import psycopg

            conninfo = settings.postgres_conninfo()
            dialect = PostgresDialect(
                lambda: psycopg.connect(**conninfo), settings.postgres_schema
            )
        sql_store = SQLReadModels(dialect)
        closers.append(dialect.close)
        replaced = sql_store.create_tables() if create_tables else sql_store.upgrade()
        store = sql_store

    # Catch-up and rebuild read the log and decode its events on a fast path
    # that gives exactly what the recorder and the mapper would (event_log.py).
    log: NotificationLog = ledger.recorder
    if SQLiteNotificationLog.supports(ledger.recorder):
        fast_log = SQLiteNotificationLog(ledger.recorder)
        closers.append(fast_log.close)
        log = fast_log
    projector = Projector(log, EventDecoder(ledger.mapper).decode, store)
    if replaced:
        _rebuild_replaced(projector)
    caught_up_reads = None
    if settings.store == "sqlite" and SQLiteNotificationLog.supports(ledger.recorder):
        caught_up_reads = CaughtUpReads(
            settings.database, ledger.recorder.events_table_name, projector
        )
        closers.append(caught_up_reads.close)
    return AllocationService(
        settings=settings,
        ledger=ledger,
        projector=projector,
        read_models=ReadModels(projector),
        store=store,
        writes=writes,
        probe=StoreProbe(settings),
        _closers=tuple(closers),
        caught_up_reads=caught_up_reads,
    )


def _rebuild_replaced(projector: Projector) -> None:
    """Rebuild read models whose tables of an older layout were replaced."""
    started = time.perf_counter()
    logger.info(
        "read-model tables of an older layout replaced (now layout %d); "
        "rebuilding them from the event log",
        SCHEMA_VERSION,
    )
    position = projector.rebuild()
    logger.info(
        "read models rebuilt up to position %d in %.2f s",
        position,
        time.perf_counter() - started,
    )


def data_directory(settings: Settings) -> Path:
    """Where the process provisioner keeps logs and state files.

    `settings.data_directory` if set; else `<database>.d` beside the SQLite
    file, `allocation-ledger.d` in the working directory with PostgreSQL,
    and a new temporary directory with the in-memory store.
    """
    if settings.data_directory is not None:
        return settings.data_directory
    if settings.store == "sqlite":
        return settings.database.with_name(settings.database.name + ".d")
    if settings.store == "postgres":
        return Path("allocation-ledger.d")
    return Path(tempfile.mkdtemp(prefix="allocation-ledger-"))


def _server_lock(
    settings: Settings, closers: list[Callable[[], None]]
) -> ServerLock | None:
    """On PostgreSQL, this server's lock on the ledger (server_lock.py):
    exclusive with the process provisioner, shared with the endpoints one;
    ServerLockError when another server excludes it. None on other stores."""
    if settings.store != "postgres":
        return None
    runs_processes = settings.catalog.effective_provisioner == "process"
    lock = ServerLock(
        settings.postgres_conninfo(),
        settings.postgres_schema or "public",
        "exclusive" if runs_processes else "shared",
    )
    closers.append(lock.close)
    return lock


def _configured_provisioner(
    settings: Settings, clock: Clock, closers: list[Callable[[], None]]
) -> Provisioner:
    """The provisioner the catalog asks for: process or endpoints.

    The process provisioner is closed first when the service closes; its
    processes keep running for the next start to adopt, unless the settings
    ask to stop them (always with the in-memory store, which forgets them).
    """
    catalog = settings.catalog
    if catalog.effective_provisioner != "process":
        hosts = {name: pool.advertise_host for name, pool in catalog.pools.items()}
        return LocalProvisioner(hosts=hosts)
    processes = ProcessProvisioner(catalog, data_directory(settings), now=clock.now)
    stop_all = settings.stop_mcp_servers_on_exit or settings.store == "memory"
    closers.append(lambda: processes.close(stop_all=stop_all))
    return processes


def init_database(settings: Settings) -> None:
    """Create the ledger's tables (events and read models); safe to repeat."""
    if settings.store == "postgres":
        _check_postgres(settings, initialised=False)
    service = open_service(settings, create_tables=True, provisioner=LocalProvisioner())
    service.close()


def _check_postgres(settings: Settings, *, initialised: bool) -> None:
    """Fail with a plain message when PostgreSQL is unreachable or empty."""
    import psycopg

    where = (
        f"{settings.postgres_host}:{settings.postgres_port}/{settings.postgres_dbname}"
    )
    try:
        connection = psycopg.connect(**settings.postgres_conninfo())
    except psycopg.Error as error:
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        msg = f"cannot reach PostgreSQL at {where}: {detail or type(error).__name__}"
        raise DatabaseError(msg) from None
    try:
        schema = settings.postgres_schema or "public"
        if (
            connection.execute(
                "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone()
            is None
        ):
            msg = (
                f"the schema {schema!r} does not exist in the PostgreSQL "
                f'database at {where}: create it (CREATE SCHEMA "{schema}") '
                "or set ALLOCATION_LEDGER_POSTGRES_SCHEMA to one that does"
            )
            raise DatabaseError(msg)
        row = connection.execute(
            "SELECT to_regclass(%s), to_regclass(%s)",
            (f'"{schema}".{EVENTS_TABLE}', f'"{schema}".ledger_view_position'),
        ).fetchone()
    finally:
        connection.close()
    if initialised and (row is None or row[0] is None or row[1] is None):
        msg = (
            f"the PostgreSQL database at {where} (schema {schema}) is not "
            "initialised: run `allocation-ledger init-db` once first"
        )
        raise DatabaseError(msg)


def resume_interrupted(service: AllocationService) -> list[str]:
    """Finish allocations a crash left pending or releasing; their ids.

    Only those untouched for the provisioning timeout are taken up, so work
    another process is doing right now is left to it; work a command of this
    process has in hand (a server slower to start than the timeout) is
    never taken for interrupted.
    """
    now = service.ledger.clock.now()
    cutoff = now - timedelta(seconds=service.settings.provisioning_timeout_seconds)
    resumed: list[str] = []
    for state in (AllocationState.PENDING, AllocationState.RELEASING):
        for view in service.read_models.allocations(ListingQuery(state=state)):
            in_hand = view.allocation_id in service.ledger.in_hand
            if view.updated_at <= cutoff and not in_hand:
                service.ledger.resume(view.allocation_id)
                resumed.append(view.allocation_id)
    return resumed
