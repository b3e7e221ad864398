"""One worker process per worker port: a port is started on only by the
allocation the pool gives it to, and only once any earlier process on it is
gone.

The pool frees a worker's port when its allocation expires or is preempted,
in the same unit of work, and the worker is stopped after that commits
(SIGTERM, a grace period, SIGKILL): for up to the grace period the pool may
give the port to a new allocation while the old process still holds it. And
an allocation released while it is being provisioned may have its workers
started after its ports went to another allocation. `WorkerPortClaims`
closes both gaps (issue 11, "What the slow path must keep": no port handed
to a new allocation while an old process still holds it): before a worker
starts on a port, under a lock per (pool, port),

- the worker's allocation must still hold that port in its pool (a fresh
  read), else the worker is not started: its allocation ended meanwhile and
  its teardown follows;
- any other worker process of this machine on that port, whose allocation
  no longer holds it, is stopped first (and waited for).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

from allocation_ledger.adapters.provisioning.workers import WorkerProcesses
from allocation_ledger.domain.errors import PoolNotFoundError
from allocation_ledger.domain.ledger import Ledger

logger = logging.getLogger(__name__)


class WorkerPortClaims:
    """Claims worker ports for starts (see the module's docstring).

    `workers`: the supervisor whose processes hold ports; `ledger`: gives
    the ledger whose pools say who holds which port; `grace_seconds`: how
    long an old worker has between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        workers: WorkerProcesses,
        ledger: Callable[[], Ledger],
        *,
        grace_seconds: float,
    ) -> None:
        self.workers = workers
        self.ledger = ledger
        self.grace_seconds = grace_seconds
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, int], threading.Lock] = {}

    @contextlib.contextmanager
    def claim(
        self, *, pool: str, allocation_id: str, worker_id: str, port: int
    ) -> Iterator[bool]:
        """Hold the port for the start of `worker_id`: yields True when the
        worker should start now (its allocation holds the port, and no other
        worker process is left on it), False when its allocation no longer
        holds the port (do not start it). Blocks while an old worker on the
        port is stopped (up to the grace period)."""
        with self._lock(pool, port):
            if not self.holds(pool, allocation_id, port):
                logger.info(
                    "worker %s not started: allocation %s no longer holds port %d",
                    worker_id,
                    allocation_id,
                    port,
                )
                yield False
                return
            for info in self.workers.status():
                if (
                    info.status == "running"
                    and info.pool == pool
                    and info.port == port
                    and info.worker_id != worker_id
                    and not self.holds(pool, info.allocation_id, port)
                ):
                    logger.warning(
                        "stopping worker %s of pool %s: port %d now belongs to %s",
                        info.worker_id,
                        pool,
                        port,
                        worker_id,
                    )
                    self.workers.stop(info.worker_id, self.grace_seconds)
            yield True

    def holds(self, pool: str, allocation_id: str, port: int) -> bool:
        """Whether the pool records `port` as a worker port of the
        allocation's live reservation now (a fresh read)."""
        try:
            found = self.ledger().pool(pool)
        except PoolNotFoundError:
            return False
        reservation = found.reservations.get(allocation_id)
        return reservation is not None and port in reservation.worker_ports

    def _lock(self, pool: str, port: int) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((pool, port), threading.Lock())
