"""The Ledger application: the commands that change allocations and pools.

Every command runs as a unit of work (unit_of_work.py): load the aggregates
it needs, let them decide, save all their new events in one transaction. A
concurrent writer that got there first makes the save fail on an aggregate's
version; the unit of work is then discarded and run again from a fresh read
(command_runner.py).

The commands are grouped by what they act on, one mixin each: pools
(pool_commands.py), new and queued requests (request_commands.py), releases
(release_commands.py), leases and idle servers (lease_commands.py), what
happened to MCP server processes (server_process_commands.py) and to worker
processes (worker_process_commands.py); they share the
provisioning steps (provisioning.py). Queries belong to the read
models (projections).
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

from eventsourcing.domain import Snapshot
from eventsourcing.persistence import IntegrityError, JSONTranscoder

from allocation_ledger.domain.lease_commands import LeaseCommands
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.pool_commands import PoolCommands
from allocation_ledger.domain.release_commands import ReleaseCommands
from allocation_ledger.domain.request_commands import RequestCommands
from allocation_ledger.domain.server_process_commands import ServerProcessCommands
from allocation_ledger.domain.transcodings import TRANSCODINGS
from allocation_ledger.domain.worker_process_commands import WorkerProcessCommands

SNAPSHOT_AFTER_EVENTS = 50
"""A pool read that replays more events than this (and than its state holds)
is snapshotted at once."""


class Ledger(
    PoolCommands,
    RequestCommands,
    ReleaseCommands,
    LeaseCommands,
    ServerProcessCommands,
    WorkerProcessCommands,
):
    """Commands on allocations and pools. Queries belong to the read models.

    Built with the ledger's clock and provisioner (see UnitOfWorkApplication
    for the other arguments); every command takes the `actor` its events
    record.
    """

    name = "AllocationLedger"
    env: ClassVar[dict[str, str]] = {
        "AGGREGATE_CACHE_MAXSIZE": "10000",
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }
    # A pool read from the store (at start, after a lost race) loads its latest
    # snapshot and the events after it. Snapshots are taken when a read had to
    # replay more events than the pool's state holds (see snapshot_if_long),
    # not every N events: a pool with many live reservations has a big
    # snapshot, and taking it every 50 events cost more than the events.
    is_snapshotting_enabled = True

    def snapshot_if_long(self, pool: Pool, replayed: int) -> None:
        """Snapshot a pool just read from the store if that replayed many events.

        Taken at once, while the pool is exactly as stored (taking it after
        the command instead, only when that command commits, let snapshots
        lag behind under contention: retries then replayed longer, lost more,
        and four writers managed half the throughput of one).

        "Many" is more than the pool's state holds (its live reservations and
        servers, at least SNAPSHOT_AFTER_EVENTS): the snapshot then costs
        about what it saves the next read. Another process may take the same
        one first; that is fine.
        """
        if self.snapshots is None or pool.pending_events:
            return
        if replayed <= max(
            SNAPSHOT_AFTER_EVENTS, len(pool.reservations) + len(pool.servers)
        ):
            return
        with contextlib.suppress(IntegrityError):
            self.snapshots.put([Snapshot.take(pool)])

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        """The library's transcodings, and those of the Pool's state."""
        super().register_transcodings(transcoder)
        for transcoding in TRANSCODINGS:
            transcoder.register(transcoding)
