"""Wiring: a Ledger, its read models and their catch-up, on the chosen store."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain.clock import Clock
from domain.ledger import Ledger
from domain.provisioner import Provisioner
from projections.catchup import LoggedNotification, Projector
from projections.queries import ReadModels
from projections.store import InMemoryReadModels, ReadModelStore

from adapters.provisioning import LocalProvisioner
from adapters.settings import Settings
from adapters.sql_read_models import PostgresDialect, SQLiteDialect, SQLReadModels
from adapters.system_clock import SystemClock


@dataclass
class AllocationService:
    """Everything a running ledger needs: commands, read models, catch-up."""

    settings: Settings
    ledger: Ledger
    projector: Projector
    read_models: ReadModels
    store: ReadModelStore
    _closers: tuple[Callable[[], None], ...] = ()

    def close(self) -> None:
        for close in self._closers:
            close()


def open_service(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    provisioner: Provisioner | None = None,
    new_allocation_id: Callable[[], str] | None = None,
) -> AllocationService:
    settings = settings or Settings()
    if settings.store == "sqlite":
        settings.database.parent.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if new_allocation_id is not None:
        extra["new_allocation_id"] = new_allocation_id
    ledger = Ledger(
        settings.eventsourcing_env(),
        clock=clock or SystemClock(),
        provisioner=provisioner or LocalProvisioner(),
        pause=time.sleep,
        jitter=random.random,
        **extra,
    )
    store: ReadModelStore
    closers: list[Callable[[], None]] = [ledger.close]
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
        sql_store.create_tables()
        closers.append(dialect.close)
        store = sql_store

    def decode(notification: LoggedNotification) -> object:
        return ledger.mapper.to_domain_event(notification)  # type: ignore[arg-type]

    projector = Projector(ledger.recorder, decode, store)
    return AllocationService(
        settings=settings,
        ledger=ledger,
        projector=projector,
        read_models=ReadModels(projector),
        store=store,
        _closers=tuple(closers),
    )
