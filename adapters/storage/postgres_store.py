"""The PostgreSQL event store as the ledger uses it: bounded waits, and no
write tried twice.

eventsourcing's PostgreSQL recorders try every call up to 10 times on a
connection error, each try waiting up to the pool's timeout for a
connection, so in an outage a command waited most of a minute. Worse, a write
whose connection broke while it committed may well be committed; tried again,
it fails on the aggregates' versions as if another writer had won, and the
unit of work runs again on the new state: a request without a request_id
then writes a second allocation, and the first holds capacity nobody knows
of. So here:

- a write is tried once; if it fails, the command fails, and the MCP edge
  tells the client whether it may have been written (tools/outcomes.py);
- a read is tried again once after its connection broke (a read is safe to
  repeat), never after the pool gave no connection in time;
- the pool waits at most the store timeout for a connection, and gives up
  re-opening a lost connection after as long (a new attempt starts whenever
  a command needs one, so a database that is back is used within seconds);
  a connection found dead makes the pool check all its idle ones;
- every connection has TCP keepalives and a user timeout, so a peer that
  stopped answering is noticed within the store timeout instead of the
  system's minutes.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.persistence import (
    InterfaceError,
    Notification,
    OperationalError,
    StoredEvent,
)
from eventsourcing.postgres import (
    ConnectionPool,
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment, EnvType

from allocation_ledger.adapters.config.settings import (
    STORE_TIMEOUT_ENV,
    connection_limits,
)

DEFAULT_STORE_TIMEOUT = 5.0

logger = logging.getLogger(__name__)

T = TypeVar("T")

_insert_aggregate_events = inspect.unwrap(PostgresAggregateRecorder.insert_events)
_insert_application_events = inspect.unwrap(PostgresApplicationRecorder.insert_events)
_select_events = inspect.unwrap(PostgresAggregateRecorder.select_events)
_select_notifications = inspect.unwrap(PostgresApplicationRecorder.select_notifications)
_max_notification_id = inspect.unwrap(PostgresApplicationRecorder.max_notification_id)


def _read(read: Callable[[], T]) -> T:
    """`read`, tried once more if its connection broke (not if the pool gave
    none in time: that try already waited its longest)."""
    try:
        return read()
    except (InterfaceError, OperationalError) as error:
        if _is_pool_timeout(error):
            raise
    return read()


def _is_pool_timeout(error: BaseException) -> bool:
    from psycopg_pool import PoolTimeout

    return isinstance(error.__cause__, PoolTimeout)


class _ReadsRetriedOnce(PostgresAggregateRecorder):
    """An aggregate's events read once more if the connection broke."""

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        return _read(
            lambda: _select_events(
                self, originator_id, gt=gt, lte=lte, desc=desc, limit=limit
            )
        )


class LedgerPostgresAggregateRecorder(_ReadsRetriedOnce):
    """The snapshot store: writes tried once, reads once more if broken."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        result: Sequence[int] | None = _insert_aggregate_events(
            self, stored_events, **kwargs
        )
        return result


class LedgerPostgresApplicationRecorder(_ReadsRetriedOnce, PostgresApplicationRecorder):
    """The event log: writes tried once, reads once more if broken."""

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        result: Sequence[int] | None = _insert_application_events(
            self, stored_events, **kwargs
        )
        return result

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        return _read(
            lambda: _select_notifications(
                self, start, limit, stop, topics, inclusive_of_start=inclusive_of_start
            )
        )

    def max_notification_id(self) -> int | None:
        last: int | None = _read(lambda: _max_notification_id(self))
        return last


class LedgerPostgresFactory(PostgresFactory):
    """eventsourcing's PostgreSQL factory with the recorders and the pool
    limits above; the store timeout is read from the environment
    (`STORE_TIMEOUT_ENV`, seconds)."""

    aggregate_recorder_class = LedgerPostgresAggregateRecorder
    application_recorder_class = LedgerPostgresApplicationRecorder

    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        timeout = float(self.env.get(STORE_TIMEOUT_ENV) or DEFAULT_STORE_TIMEOUT)
        connect = self.env.get(self.POSTGRES_CONNECT_TIMEOUT)
        self.datastore.pool = _bounded_pool(
            self.datastore, timeout, None if not connect else int(connect)
        )


def _bounded_pool(
    datastore: PostgresDatastore, timeout: float, connect_timeout: int | None
) -> ConnectionPool[Any]:
    """The datastore's pool (not yet opened), made again with the limits of
    the module (the datastore has no way to pass them).

    Its check of a connection before use also notices one the server hung
    up on; once a check fails, the other idle connections are checked too,
    in the background, so that after an outage the pool is refilled at once
    instead of the next commands finding its dead connections one by one.
    """
    old = datastore.pool
    kwargs = dict(old.kwargs) if isinstance(old.kwargs, dict) else {}
    kwargs.update(connection_limits(timeout))
    if connect_timeout is not None:
        kwargs["connect_timeout"] = connect_timeout
    sweeping = threading.Lock()

    def check(connection: Any) -> None:
        try:
            ConnectionPool.check_connection(connection)
        except Exception:
            if sweeping.acquire(blocking=False):
                threading.Thread(target=sweep, daemon=True).start()
            raise

    def sweep() -> None:
        try:
            pool.check()
        except Exception:  # the next command checks again
            logger.debug("checking the pool's idle connections failed", exc_info=True)
        finally:
            sweeping.release()

    pool: ConnectionPool[Any] = _DeadlinePool(
        get_password_func=old.get_password_func,
        connection_class=old.connection_class,
        kwargs=kwargs,
        min_size=old.min_size,
        max_size=old.max_size,
        open=False,
        configure=datastore.after_connect_func(),
        timeout=timeout,
        max_waiting=old.max_waiting,
        max_lifetime=old.max_lifetime,
        reconnect_timeout=timeout,
        check=check if datastore.pre_ping else None,
    )
    return pool


_deadline = threading.local()
MIN_WAIT = 0.1
"""Seconds a unit of work past its deadline still waits for a connection
(one is usually ready at once)."""


@contextmanager
def unit_deadline(seconds: float) -> Iterator[None]:
    """Within the block, a wait of this thread for a connection ends at the
    latest `seconds` after the block began (an inner block has its own)."""
    outer = getattr(_deadline, "at", None)
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = outer


class _DeadlinePool(ConnectionPool[Any]):
    """A pool whose wait for a connection also ends at the deadline of the
    unit of work running in the thread (see `unit_deadline`): a command that
    waited for the ledger while others held it waits the less for a
    connection, so that both waits together stay within the store timeout."""

    def getconn(self, timeout: float | None = None) -> Any:
        at = getattr(_deadline, "at", None)
        if timeout is None and at is not None:
            timeout = min(self.timeout, max(at - time.monotonic(), MIN_WAIT))
        return super().getconn(timeout)
