"""Allocation rows folded as documents (projections/listing_documents.py)
are byte for byte the rows folded as views and written by the row codec:
after every event of every kind, and in the tables, whatever the batches."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.adapters.storage.sql_dialects import SQLiteDialect
from allocation_ledger.adapters.storage.sql_read_models import SQLReadModels
from allocation_ledger.adapters.storage.sql_rows import (
    VIEW_TABLES,
    allocation_row,
    decode_document,
    listing_row,
)
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest
from allocation_ledger.projections import catchup
from allocation_ledger.projections.catchup import DocumentCommits, Projector
from allocation_ledger.projections.codec import allocation_from_dict
from allocation_ledger.projections.folds import fold_allocation
from allocation_ledger.projections.listing_documents import (
    ListingDocument,
    document_of,
    fold_document,
    requested_document,
    stored_document,
)
from allocation_ledger.projections.store import ReadModelStore
from allocation_ledger.projections.views import AllocationView
from tests.ledger_support import (
    RecordingProvisioner,
    event_classes,
    every_kind_of_event,
    stored_events,
)

ODD_METADATA: list[dict[str, Any]] = [
    {"text": '"_type_"', "quote": 'say "hi"'},
    {"escaped": "tab\there\u0001", "accent": "é"},
    {"nested": {"list": [1, 2.5, None, True]}},
]


@pytest.fixture
def history(tmp_path: Path) -> Iterator[AllocationService]:
    """A SQLite ledger whose log holds every kind of allocation event."""
    clock = ManualClock()
    provisioner = RecordingProvisioner()
    service = open_service(
        Settings(store="sqlite", database=tmp_path / "ledger.db"),
        clock=clock,
        provisioner=provisioner,
    )
    try:
        every_kind_of_event(service.ledger, clock)
        for n, metadata in enumerate(ODD_METADATA):
            made = service.ledger.request(
                AllocationRequest(f"odd-{n}", ("github",), 1, metadata=metadata)
            )
            clock.advance(5)
            if n:
                service.ledger.release(made.allocation.allocation_id)
        provisioner.fail_provision = RuntimeError("no room on the host")
        with contextlib.suppress(Exception):
            service.ledger.request(AllocationRequest("fails", (), 1))
        yield service
    finally:
        service.close()


def test_every_event_leaves_the_row_the_view_fold_leaves(
    history: AllocationService,
) -> None:
    views: dict[UUID, AllocationView] = {}
    documents: dict[UUID, ListingDocument] = {}
    folded: set[str] = set()
    for stored in stored_events(history.ledger):
        event = stored.event
        if not isinstance(event, Allocation.Event):
            continue
        key = event.originator_id
        if isinstance(event, Allocation.Requested):
            views[key] = fold_allocation(None, event)
            views[key].sequence = stored.position
            documents[key] = requested_document(event, stored.position)
        else:
            views[key] = fold_allocation(views[key], event)
            fold_document(documents[key], event)
        folded.add(type(event).__qualname__)
        expected = allocation_row(views[key])
        assert listing_row(documents[key]) == expected, type(event)
        # A row read back from its stored document, to fold more into.
        again = allocation_from_dict(decode_document(expected[-1]))
        assert listing_row(document_of(again)) == expected
    assert folded == event_classes(Allocation)


def test_no_event_may_come_before_the_request(history: AllocationService) -> None:
    released = next(
        e.event
        for e in stored_events(history.ledger)
        if isinstance(e.event, Allocation.Released)
    )
    with pytest.raises(ValueError, match="arrived before the allocation's request"):
        fold_document(None, released)


def test_moments_keep_their_own_offsets() -> None:
    """Equal moments in different zones are written each as itself."""
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    elsewhere = at.astimezone(timezone(timedelta(hours=1)))
    assert at == elsewhere
    row: ListingDocument = {"created_at": at, "updated_at": elsewhere}
    row |= {"activated_at": at}
    row |= {"expires_at": None, "ended_at": None, "release_requested_at": None}
    row |= {"queue_deadline": None, "reserved_at": elsewhere}
    stored = stored_document(row)
    assert stored["created_at"] == stored["activated_at"] == at.isoformat()
    assert stored["updated_at"] == stored["reserved_at"] == elsewhere.isoformat()
    assert stored["created_at"] != stored["updated_at"]


class ViewsOnly:
    """A SQL store that takes rows as views only: catch-up folds views."""

    def __init__(self, inner: SQLReadModels) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "commit_documents":
            raise AttributeError(name)
        return getattr(self.inner, name)


def _tables(path: Path) -> list[list[tuple[Any, ...]]]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return [
            connection.execute(
                f"SELECT * FROM {table} ORDER BY aggregate_id"
            ).fetchall()
            for table in VIEW_TABLES
        ]


@pytest.mark.parametrize("batch_size", [1, 4, 1000])
@pytest.mark.parametrize("replay", ["catch_up", "rebuild"])
def test_the_tables_hold_the_rows_the_views_give(
    history: AllocationService,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    batch_size: int,
    replay: str,
) -> None:
    """Folded as documents, in batches that split allocations' histories or
    not, the tables are the ones folding views gives, byte for byte: rows
    read ahead of each batch (catch-up) or as their first event comes
    (rebuild, here in batches as small)."""
    monkeypatch.setattr(catchup, "REBUILD_BATCH_SIZE", 1)
    paths = {}
    for name, as_documents in (("documents", True), ("views", False)):
        paths[name] = tmp_path / f"{name}.db"
        dialect = SQLiteDialect(str(paths[name]))
        models = SQLReadModels(dialect)
        models.create_tables()
        store: ReadModelStore = models if as_documents else ViewsOnly(models)
        assert isinstance(store, DocumentCommits) is as_documents
        projector = Projector(
            history.projector.log,
            history.projector.decode,
            store,
            batch_size=batch_size,
        )
        if replay == "rebuild":
            projector.rebuild()
        else:
            projector.catch_up()
        dialect.close()
    documents, views = _tables(paths["documents"]), _tables(paths["views"])
    assert documents == views
    requests = [
        e for e in stored_events(history.ledger) if e.topic.endswith(":requested")
    ]
    assert len(documents[0]) == len(requests) > 5
    # And the service's own tables, folded as documents as commands came.
    history.read_models.catch_up()
    assert _tables(tmp_path / "ledger.db") == views
