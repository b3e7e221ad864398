"""Reading the event log fast, for catch-up and rebuild of the read models.

Two pieces, each falling back to the library where it cannot be exact:

- `SQLiteNotificationLog` reads the SQLite events table with one plain SELECT
  per batch (the statement the recorder uses), building light tuples instead
  of a frozen dataclass and a fresh UUID per row. Everything else (the
  maximum position, PostgreSQL, in-memory) goes to the recorder itself.
- `EventDecoder` turns a stored notification into the same domain event the
  ledger's mapper would, by parsing its JSON with orjson (no Python hook for
  every object, several times faster than the standard library's parser)
  and converting the top-level transcoded values (timestamps) itself.
  Whenever the stored state holds anything else that the mapper's hook
  would convert, or a cipher, compressor or class version is in play, or
  orjson refuses the text, it hands the notification to the mapper.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple, TypeGuard
from uuid import UUID

import orjson
from eventsourcing.persistence import (
    DatetimeAsISO,
    JSONTranscoder,
    Mapper,
    Transcoding,
    find_id_convertor,
    pass_through_convertor,
)
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import resolve_topic

_TYPE_KEY = b'"_type_"'
_ESCAPE = b"\\u"
_UUID_CACHE_SIZE = 10_000  # aggregate ids: an aggregate's events lie close together


class StoredNotification(NamedTuple):
    """A notification as read from the events table (same fields as the library's)."""

    id: int
    originator_id: UUID
    originator_version: int
    topic: str
    state: bytes


class SQLiteNotificationLog:
    """The notification log of a SQLite application recorder, read directly."""

    def __init__(self, recorder: SQLiteApplicationRecorder) -> None:
        self.recorder = recorder
        self._path = recorder.datastore.pool.db_name
        self._table = recorder.events_table_name
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._uuids: dict[str, UUID] = {}
        self._older_uuids: dict[str, UUID] = {}

    @staticmethod
    def supports(recorder: object) -> TypeGuard[SQLiteApplicationRecorder]:
        """A SQLite recorder on a file, with UUID ids (as the ledger's are).

        In-memory databases are per connection, so they are read through the
        recorder.
        """
        return (
            isinstance(recorder, SQLiteApplicationRecorder)
            and not recorder.datastore.pool.is_sqlite_memory_mode
            and recorder.datastore.originator_id_type == "uuid"
        )

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = sqlite3.connect(
                self._path,
                uri=True,
                timeout=30,
                isolation_level=None,
                check_same_thread=False,
            )
            self._connection.execute("PRAGMA busy_timeout=30000")
        return self._connection

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> list[StoredNotification]:
        clauses: list[str] = []
        params: list[Any] = []
        if start is not None:
            clauses.append("rowid>=?" if inclusive_of_start else "rowid>?")
            params.append(start)
        if stop is not None:
            clauses.append("rowid<=?")
            params.append(stop)
        if topics:
            clauses.append(f"topic IN ({','.join('?' * len(topics))})")
            params.extend(topics)
        statement = (
            f"SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {self._table} "
            + (f"WHERE {' AND '.join(clauses)} " if clauses else "")
            + "ORDER BY rowid LIMIT ?"
        )
        params.append(limit)
        with self._lock:
            rows = self._connect().execute(statement, params).fetchall()
            if len(self._uuids) >= _UUID_CACHE_SIZE:
                self._older_uuids = self._uuids
                self._uuids = {}
        # tuple.__new__ and the cache's look-up inline: no Python call per row
        # (a rebuild reads a million).
        make = tuple.__new__
        cached = self._uuids.get
        uuid = self._uuid
        return [
            make(
                StoredNotification,
                (row_id, cached(originator) or uuid(originator), version, topic, state),
            )
            for row_id, originator, version, topic, state in rows
        ]

    def _uuid(self, value: str) -> UUID:
        """The UUID of an aggregate id the newer generation of the cache
        lacks, the same object each time while it keeps coming: dictionaries
        keyed by it then find it by identity, without comparing. Two
        generations of ids are kept (the newer replaces the older when it
        holds `_UUID_CACHE_SIZE`, between batches): one seen in the older is
        moved to the newer, so a pool's id, which recurs all along the log,
        never changes object."""
        found = self._older_uuids.get(value)
        if found is None:
            found = UUID(value)
        self._uuids[value] = found
        return found

    def max_notification_id(self) -> int | None:
        return self.recorder.max_notification_id()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class _Topic:
    """What the decoder knows about one topic: its class, where values hide."""

    __slots__ = ("cls", "convertor", "id_type", "keys")

    def __init__(self, cls: type[Any] | None) -> None:
        self.cls = cls
        self.keys: list[str] = []  # top-level keys seen holding transcoded values
        self.id_type: type[Any] | None = None  # of the originator ids seen so far
        self.convertor: Callable[[Any], Any] = pass_through_convertor


class EventDecoder:
    """Stored notification -> domain event, as `mapper.to_domain_event` does."""

    MOMENTS = 4096
    """How many timestamps it keeps parsed: events of one unit of work share
    their moment, and leases end at a few offsets from it."""

    def __init__(self, mapper: Mapper[UUID]) -> None:
        self.mapper = mapper
        transcoder = mapper.transcoder
        self._exact_only = (
            mapper.cipher is not None
            or mapper.compressor is not None
            or not isinstance(transcoder, JSONTranscoder)
        )
        self._names: dict[str, Transcoding] = (
            transcoder.names if isinstance(transcoder, JSONTranscoder) else {}
        )
        # The library's own timestamp transcoding is fromisoformat: call it inline.
        self._iso = type(self._names.get("datetime_iso")) is DatetimeAsISO
        self._topics: dict[str, _Topic] = {}
        self._moments: dict[str, datetime] = {}
        self.decode: Callable[[Any], object] = self._decoding()
        """The decoder as a plain function (what catch-up and audits call)."""

    def _topic(self, topic: str) -> _Topic:
        found = self._topics.get(topic)
        if found is None:
            cls: type[Any] = resolve_topic(topic)
            # A class with a version above 1 may need upcasting: the mapper's job.
            found = _Topic(cls if getattr(cls, "class_version", 1) == 1 else None)
            self._topics[topic] = found
        return found

    def _moment(self, text: str) -> datetime:
        """datetime.fromisoformat(text), remembered (datetimes are immutable)."""
        moments = self._moments
        found = moments.get(text)
        if found is None:
            if len(moments) >= self.MOMENTS:
                moments.clear()
            found = moments[text] = datetime.fromisoformat(text)
        return found

    def _convert(self, state: dict[str, Any], key: str) -> int:
        """Decode state[key] if the mapper's hook would: 1 if done, 0 if not, -1."""
        value = state.get(key)
        if (
            type(value) is dict
            and len(value) == 2
            and "_type_" in value
            and "_data_" in value
        ):
            kind = value["_type_"]
            if kind == "datetime_iso" and self._iso and type(value["_data_"]) is str:
                state[key] = self._moment(value["_data_"])
                return 1
            transcoding = self._names.get(kind)
            if transcoding is None:
                return -1
            state[key] = transcoding.decode(value["_data_"])
            return 1
        return 0

    def __call__(self, notification: Any) -> object:
        return self.decode(notification)

    def _decoding(self) -> Callable[[Any], object]:
        """The decoding function: a closure over what it reads, since a
        rebuild calls it once per event (a million times for a million)."""
        mapper = self.mapper

        def exact(notification: Any) -> object:
            return mapper.to_domain_event(notification)

        if self._exact_only:
            return exact
        topics = self._topics
        find_topic = self._topic
        moments = self._moments if self._iso else None
        remember = self._moment
        convert = self._convert
        loads = orjson.loads
        refused = orjson.JSONDecodeError
        make = object.__new__
        set_state = object.__setattr__

        def decode(notification: Any) -> object:
            topic = topics.get(notification.topic)
            if topic is None:
                topic = find_topic(notification.topic)
            cls = topic.cls
            stored: bytes = notification.state
            if cls is None or _ESCAPE in stored:
                return exact(notification)
            try:
                state = loads(stored)
            except refused:
                # Not JSON as orjson reads it (or beyond its limits, such as
                # an integer over 64 bits or an unpaired surrogate): the
                # mapper reads it, or raises its error.
                return exact(notification)
            if type(state) is not dict or "class_version" in state:
                return exact(notification)
            # Each value the mapper's hook would convert is a {"_type_",
            # "_data_"} object, so it spells "_type_" once: when the top-level
            # conversions account for every "_type_" in the bytes, there is
            # nothing else to do.
            expected = stored.count(_TYPE_KEY)
            if expected:
                converted = 0
                for key in topic.keys:
                    value = state.get(key)
                    if type(value) is not dict:
                        continue
                    # The common case inline: a timestamp (as `_convert` does).
                    if (
                        moments is not None
                        and len(value) == 2
                        and value.get("_type_") == "datetime_iso"
                        and type(data := value.get("_data_")) is str
                    ):
                        moment = moments.get(data)
                        state[key] = remember(data) if moment is None else moment
                        converted += 1
                        continue
                    done = convert(state, key)
                    if done < 0:
                        return exact(notification)
                    converted += done
                if converted != expected:
                    for key in list(state):
                        done = convert(state, key)
                        if done < 0:
                            return exact(notification)
                        if done:
                            converted += 1
                            if key not in topic.keys:
                                topic.keys.append(key)
                if converted != expected:
                    # Something below the top level would be converted by
                    # the hook (or only looks like it): the mapper does it all.
                    return exact(notification)
            originator_id = notification.originator_id
            if type(originator_id) is not topic.id_type:
                topic.id_type = type(originator_id)
                topic.convertor = find_id_convertor(cls, type(originator_id))  # type: ignore[arg-type]
            convertor = topic.convertor
            state["originator_id"] = (
                originator_id
                if convertor is pass_through_convertor
                else convertor(originator_id)
            )
            state["originator_version"] = notification.originator_version
            event = make(cls)
            set_state(event, "__dict__", state)
            return event

        return decode
