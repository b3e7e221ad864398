"""Opening an existing ledger for the commands that only read: status,
history, capacity, verify, export, usage, timeline. Nothing is created, and
a SQLite file is never written."""

from __future__ import annotations

from collections.abc import Callable

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.adapters.storage.event_log import (
    EventDecoder,
    SQLiteNotificationLog,
)
from allocation_ledger.adapters.storage.ledger_file import (
    LedgerMissingError,
    check_ledger_tables,
    check_sqlite_file,
    ledger_location,
    read_only_uri,
)
from allocation_ledger.adapters.storage.read_only_models import ReadOnlyReadModels
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.adapters.storage.store_health import StoreProbe
from allocation_ledger.adapters.storage.system_clock import (
    SystemClock,
    log_clock_behind,
)
from allocation_ledger.adapters.storage.write_journal import WriteJournal
from allocation_ledger.domain.clock import Clock
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.projections.catchup import NotificationLog, Projector
from allocation_ledger.projections.queries import ReadModels


def open_reader(
    settings: Settings | None = None, *, clock: Clock | None = None
) -> AllocationService:
    """Open an existing ledger for commands that only read (status, history,
    capacity, verify, export, usage, timeline); never create anything.

    A SQLite file is opened read-only (ledger_file.read_only_uri), its read
    models as ReadOnlyReadModels keep them, so a backup copy or a file
    nobody may write can be read and verified. PostgreSQL is opened as
    `open_service` opens it, which creates no tables there. Raises
    LedgerMissingError when there is no ledger at the configured place (the
    in-memory store never keeps one), DatabaseError when what is there
    cannot be read.
    """
    settings = settings or Settings()
    if settings.store == "memory":
        raise LedgerMissingError(
            "memory",
            "the in-memory store keeps nothing between commands; set "
            "ALLOCATION_LEDGER_STORE to sqlite or postgres",
        )
    if settings.store == "postgres":
        service = open_service(
            settings, clock=clock, provisioner=LocalProvisioner(), create_tables=False
        )
        service.read_only = True
        return service
    shown = ledger_location(settings)
    check_sqlite_file(settings.database, must_exist=True)
    uri = read_only_uri(settings.database)
    check_ledger_tables(uri, shown)
    env = settings.eventsourcing_env()
    env["SQLITE_DBNAME"] = uri
    env["CREATE_TABLE"] = "n"
    ledger = Ledger(
        env,
        clock=clock or SystemClock(),
        provisioner=LocalProvisioner(),
        on_clock_behind=log_clock_behind,
    )
    store = ReadOnlyReadModels(uri)
    closers: list[Callable[[], None]] = [ledger.close, store.close]
    log: NotificationLog = ledger.recorder
    if SQLiteNotificationLog.supports(ledger.recorder):
        fast_log = SQLiteNotificationLog(ledger.recorder)
        closers.append(fast_log.close)
        log = fast_log
    projector = Projector(log, EventDecoder(ledger.mapper).decode, store)
    return AllocationService(
        settings=settings,
        ledger=ledger,
        projector=projector,
        read_models=ReadModels(projector),
        store=store,
        writes=WriteJournal(),
        probe=StoreProbe(settings),
        _closers=tuple(closers),
        read_only=True,
    )
