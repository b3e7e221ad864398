"""Group commit: the saves of concurrent commands, recorded in one transaction.

Commands of one process decide one after another under the ledger's lock
(command_runner.py), each on the aggregates as the commands before it left
them. A command's save does not write: it encodes its new events and adds
them to the open `CommitBatch`, and the command lets go of the lock. Whoever
holds the lock last, with nobody waiting for it, records the whole batch in
one transaction (one durable commit, one fsync, for every command in it) and
then tells every member the outcome. A member is answered only after that:
nothing is acknowledged that a crash could lose.

A batch that fails to record (another process saved one of its aggregates
first: `IntegrityError`) wrote nothing; every member decides again on fresh
reads. A command whose own decision fails (a refusal, an encoding error) is
discarded alone, after the batch open beneath it is recorded: it never fails
its neighbours. How TigerBeetle and PostgreSQL's WAL reach their rates; see
docs/architecture.md, "Group commit".
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

PENDING_POSITION: Final = -1
"""What `UnitOfWork.save` answers for a save that waits in a batch: the
command's position is known once the batch is recorded, and the retry loop
puts it in the command's answer (`resolve_position`). Never a real position
(those start at 1)."""

MAX_BATCH_MEMBERS: Final = 256
"""A batch with this many members is recorded at once, even while others wait
for the lock: a bound on how long the first member waits, and on how many
events one transaction holds."""


@dataclass
class BatchMember:
    """One command's part of a batch: the slices of the batch's events it
    saved (`spans`, (start, end) indexes), and its outcome once the batch is
    settled. A member with no spans saved nothing but decided on what the
    batch holds, so it too waits for the batch."""

    batch: CommitBatch
    spans: list[tuple[int, int]] = field(default_factory=list)
    notes: list[Any] = field(default_factory=list)
    """What an adapter noted of each save (`UnitOfWorkApplication._saving`)."""

    @property
    def wrote(self) -> bool:
        """Whether this member saved any event."""
        return bool(self.spans)

    def position(self) -> int | None:
        """The notification position of this member's last event (None when
        it saved none). Only once the batch is recorded."""
        ids = self.batch.notification_ids
        if not self.spans or not ids:
            return None
        return max(max(ids[start:end]) for start, end in self.spans if end > start)


class CommitBatch:
    """Saves of commands decided one after another, recorded together.

    Built and recorded under the ledger's lock; members wait for `settled`
    without it. `events` and `stored` are in decision order (an aggregate's
    versions ascending); `aggregates` holds each aggregate with unrecorded
    events here, as the last member left it (the cached object itself).
    """

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.stored: list[StoredEvent] = []
        self.aggregates: dict[UUID, Aggregate] = {}
        self.members: list[BatchMember] = []
        self.notification_ids: list[int] = []
        self.error: BaseException | None = None
        self._settled = threading.Event()

    def join(self) -> BatchMember:
        """A new member (one command's attempt)."""
        member = BatchMember(self)
        self.members.append(member)
        return member

    def add(
        self,
        member: BatchMember,
        events: list[Any],
        stored: list[StoredEvent],
        aggregates: dict[UUID, Aggregate],
    ) -> None:
        """Add one save of `member`: its events, encoded, and the aggregates
        they belong to."""
        start = len(self.stored)
        self.events.extend(events)
        self.stored.extend(stored)
        member.spans.append((start, len(self.stored)))
        self.aggregates.update(aggregates)

    @property
    def full(self) -> bool:
        """Recorded at once when the lock is let go (MAX_BATCH_MEMBERS)."""
        return len(self.members) >= MAX_BATCH_MEMBERS

    def holds(self, aggregate_id: UUID) -> Aggregate | None:
        """The aggregate as this batch leaves it, if it has unrecorded events here."""
        return self.aggregates.get(aggregate_id)

    def recorded(self, notification_ids: list[int]) -> None:
        """The batch is durable; `notification_ids`, one per stored event."""
        self.notification_ids = list(notification_ids)
        self._settled.set()

    def failed(self, error: BaseException) -> None:
        """Recording the batch raised `error`: nothing of it is durable."""
        self.error = error
        self._settled.set()

    @property
    def is_settled(self) -> bool:
        """Recorded or failed."""
        return self._settled.is_set()

    def wait(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the outcome; whether it came."""
        return self._settled.wait(timeout)


def resolve_position(answer: Any, position: int | None) -> Any:
    """`answer` with PENDING_POSITION replaced by `position`: the answer
    itself, a dataclass's `position` field, or an item of a tuple (the
    shapes command bodies answer in)."""
    if type(answer) is int:
        return position if answer == PENDING_POSITION else answer
    if isinstance(answer, tuple):
        return tuple(resolve_position(item, position) for item in answer)
    if (
        dataclasses.is_dataclass(answer)
        and not isinstance(answer, type)
        and getattr(answer, "position", None) == PENDING_POSITION
    ):
        return dataclasses.replace(answer, position=position)
    return answer
