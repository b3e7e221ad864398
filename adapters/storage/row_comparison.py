"""How `verify` compares the allocation rows of its replay with the stored ones."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any
from uuid import UUID

from allocation_ledger.adapters.storage.sql_rows import decode_document, encode_document
from allocation_ledger.projections.codec import allocation_to_dict
from allocation_ledger.projections.store import ReadModelStore
from allocation_ledger.projections.views import AllocationView


class RowComparison:
    """Compares replayed allocation rows with the stored ones, 500 at a time.

    Where the store offers its rows' JSON text as written
    (`allocation_texts`), the replayed row's document is encoded the same
    way and the two texts compared: equal texts are equal rows, with no
    parsing. Otherwise, or when the texts differ, the stored text is parsed
    (or the store's parsed document read, `allocation_documents`) and
    compared as a dictionary; only when that differs too is the stored row
    read as a row, so that two spellings of one row (a document written by
    an older version) are not called a difference.
    """

    CHUNK = 500

    def __init__(self, store: ReadModelStore) -> None:
        self._store = store
        self._texts: Callable[[Collection[UUID]], dict[UUID, str]] | None = getattr(
            store, "allocation_texts", None
        )
        self._documents: Callable[[Collection[UUID]], dict[UUID, Any]] | None = getattr(
            store, "allocation_documents", None
        )
        self._pending: list[tuple[UUID, AllocationView]] = []
        self.mismatches: list[str] = []

    def add(self, key: UUID, view: AllocationView) -> None:
        """Compare this replayed row (in its turn, with its chunk)."""
        self._pending.append((key, view))
        if len(self._pending) >= self.CHUNK:
            self._compare()

    def finish(self) -> list[str]:
        """Compare what is pending; every difference found, in words."""
        self._compare()
        return self.mismatches

    def _compare(self) -> None:
        chunk, self._pending = self._pending, []
        if not chunk:
            return
        keys = [key for key, _ in chunk]
        differing: list[tuple[UUID, AllocationView]] = []
        if self._texts is not None:
            texts = self._texts(keys)
            for key, view in chunk:
                document = allocation_to_dict(view)
                text = texts.get(key)
                if text is None or (
                    text != encode_document(document)
                    and (decode_document(text) != document)
                ):
                    differing.append((key, view))
        else:
            documents = {} if self._documents is None else self._documents(keys)
            for key, view in chunk:
                if documents.get(key) != allocation_to_dict(view):
                    differing.append((key, view))
        if not differing:
            return
        stored_rows = self._store.allocations([key for key, _ in differing])
        for key, view in differing:
            stored = stored_rows.get(key)
            if stored is None:
                self.mismatches.append(
                    f"allocation {view.allocation_id} is not in read model"
                )
            elif allocation_to_dict(stored) != allocation_to_dict(view):
                self.mismatches.append(
                    f"allocation {view.allocation_id} differs in read model"
                )
