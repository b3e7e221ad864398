"""What one command wrote, save by save: the facts its reply must tell.

A tool call runs its command in one thread. While the journal is recording
in that thread, every save the ledger makes there is noted: the allocations
it wrote (each with the state it was saved in), the pools it held (with
their settings as saved), and whether it committed or failed, with the
error (with group commit, once the batch it waited in was recorded or
failed). The MCP edge builds a reply from what was committed, and an error
reply says what had been written before the error, if anything, and whether
the write that failed may have been committed (tools/outcomes.py).

Saves made in other threads (the sweeper, the idle-server stopper) are not
noted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from allocation_ledger.adapters.storage.postgres_store import unit_deadline
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.unit_of_work import UnitOfWork

T = TypeVar("T")


@dataclass
class SaveAttempt:
    """One save (one transaction) of a command.

    `allocations`: each allocation it wrote events for, with the state it was
    saved in; `pools`: each pool it held, with its settings as saved;
    `changed_pools`: the pools it wrote events for. `committed` once the
    store said so; `error` if the save raised.
    """

    allocations: dict[str, str]
    pools: dict[str, PoolSettings]
    changed_pools: tuple[str, ...]
    committed: bool = False
    error: BaseException | None = None

    @property
    def lost_race(self) -> bool:
        """Another writer saved first: nothing of it was written (the unit
        of work runs again on the new state)."""
        return isinstance(self.error, IntegrityError)


@dataclass
class CommandWrites:
    """Every save one command made, in order."""

    attempts: list[SaveAttempt] = field(default_factory=list)

    @property
    def committed(self) -> list[SaveAttempt]:
        return [a for a in self.attempts if a.committed]

    @property
    def failed(self) -> SaveAttempt | None:
        """The last save, if it failed other than by losing a race."""
        if not self.attempts:
            return None
        last = self.attempts[-1]
        if last.committed or last.error is None or last.lost_race:
            return None
        return last

    def saved_allocations(self) -> dict[str, str]:
        """Each allocation committed, with the last state it was saved in."""
        saved: dict[str, str] = {}
        for attempt in self.committed:
            saved.update(attempt.allocations)
        return saved

    def saved_pools(self) -> list[str]:
        """The pools whose changes were committed, in order."""
        pools: list[str] = []
        for attempt in self.committed:
            pools += [p for p in attempt.changed_pools if p not in pools]
        return pools

    def pool_settings(self, pool: str) -> PoolSettings | None:
        """The pool's settings as last committed by this command (None: no
        committed save of this command held the pool)."""
        for attempt in reversed(self.committed):
            if pool in attempt.pools:
                return attempt.pools[pool]
        return None


class WriteJournal:
    """Notes the saves of the commands run under `recording`, per thread."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextmanager
    def recording(self) -> Iterator[CommandWrites]:
        """Note every save made in this thread until the block ends."""
        writes = CommandWrites()
        outer = getattr(self._local, "writes", None)
        self._local.writes = writes
        try:
            yield writes
        finally:
            self._local.writes = outer

    def current(self) -> CommandWrites | None:
        """What the command running in this thread wrote so far (None when
        nothing is recording here)."""
        writes: CommandWrites | None = getattr(self._local, "writes", None)
        return writes

    def begin(self, aggregates: tuple[Any, ...]) -> SaveAttempt | None:
        """A save of `aggregates` is about to be made (None: not noted)."""
        writes = self.current()
        if writes is None or not all(isinstance(a, Aggregate) for a in aggregates):
            return None
        allocations: dict[str, str] = {}
        pools: dict[str, PoolSettings] = {}
        changed: list[str] = []
        for aggregate in aggregates:
            if isinstance(aggregate, Allocation) and aggregate.pending_events:
                allocations[aggregate.allocation_id] = aggregate.state.value
            elif isinstance(aggregate, Pool):
                pools[aggregate.name] = aggregate.settings
                if aggregate.pending_events:
                    changed.append(aggregate.name)
        attempt = SaveAttempt(allocations, pools, tuple(changed))
        writes.attempts.append(attempt)
        return attempt


class JournaledLedger(Ledger):
    """The Ledger, with each save noted in `journal` (see the module), and
    each unit of work's waits for the store bounded by `lock_timeout` in all
    (postgres_store.unit_deadline)."""

    # eventsourcing names an application after its class unless told: keep
    # the Ledger's name, which names the tables.
    name = Ledger.name

    def __init__(self, *args: Any, journal: WriteJournal, **kwargs: Any) -> None:
        self.journal = journal
        super().__init__(*args, **kwargs)

    def _run(self, command: str, body: Callable[[UnitOfWork], T]) -> T:
        """Each unit of work waits for the store (for the ledger, then for a
        PostgreSQL connection) `lock_timeout` seconds in all, at most."""
        if self.lock_timeout is None:
            return super()._run(command, body)
        with unit_deadline(self.lock_timeout):
            return super()._run(command, body)

    def _saving(self, aggregates: tuple[Aggregate, ...]) -> object:
        return self.journal.begin(aggregates)

    def _saved(self, note: object, error: BaseException | None) -> None:
        if isinstance(note, SaveAttempt):
            note.error = error
            note.committed = error is None
