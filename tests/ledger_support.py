"""Helpers shared by the unit tests of the ledger: a recording provisioner,
readers of the stored event log, and a history with every kind of event."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.domain import Aggregate

from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.adapters.storage.event_log import EventDecoder
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import AllocationRequest, Priority, Resources

OpenService = Callable[..., AllocationService]
"""What `open_ledger_service` and `open_services` give: open a service (closed
at the end of the test)."""


@dataclass
class RecordingProvisioner(LocalProvisioner):
    """The local provisioner, remembering every call; can be told to fail."""

    fail_provision: Exception | None = None
    fail_deprovision: Exception | None = None
    provisioned: list[str] = field(default_factory=list)
    deprovisioned: list[str] = field(default_factory=list)
    stopped: list[tuple[str, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints:
        if self.fail_provision is not None:
            raise self.fail_provision
        self.provisioned.append(allocation_id)
        return super().provision(allocation_id, workers, servers, pool=pool)

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> None:
        if self.fail_deprovision is not None:
            raise self.fail_deprovision
        self.deprovisioned.append(allocation_id)

    def stop_server(self, name: str, port: int, *, pool: str) -> None:
        self.stopped.append((name, port))


@dataclass(frozen=True)
class StoredEvent:
    position: int
    topic: str
    event: Any


def stored_events(ledger: Ledger, after: int = 0) -> list[StoredEvent]:
    """Every event in the ledger's notification log after `after`, decoded."""
    notifications = ledger.recorder.select_notifications(
        after, 100_000, inclusive_of_start=False
    )
    return [
        StoredEvent(n.id, n.topic, ledger.mapper.to_domain_event(n))
        for n in notifications
    ]


def assert_decoder_agrees(ledger: Ledger) -> set[str]:
    """The fast event decoder of catch-up, rebuild and audits gives, for every
    event in the log, exactly what the ledger's mapper gives (same class, same
    attributes); answers the event classes it checked."""
    decode = EventDecoder(ledger.mapper)
    kinds: set[str] = set()
    position = 0
    while True:
        notifications = ledger.recorder.select_notifications(
            position, 1000, inclusive_of_start=False
        )
        if not notifications:
            return kinds
        for notification in notifications:
            expected = ledger.mapper.to_domain_event(notification)
            got = decode(notification)
            assert type(got) is type(expected), notification
            assert vars(got) == vars(expected), notification
            kinds.add(type(expected).__qualname__)
        position = notifications[-1].id


def last_position(ledger: Ledger) -> int:
    return ledger.recorder.max_notification_id() or 0


def sequential_ids() -> Callable[[], str]:
    """An allocation-id factory giving alloc-000000000001, ...002, ... in order."""
    counter = iter(range(1, 1_000_000))

    def new_id() -> str:
        return f"alloc-{next(counter):012x}"

    return new_id


@contextmanager
def lined_up(
    ledger: Ledger, commands: Sequence[Callable[[], Any]]
) -> Iterator[list[Any]]:
    """Run `commands` in threads that all wait for the ledger's lock while
    the test holds it, then let them go: they decide one after another and
    the last records them all in one batch. Yields each command's answer (or
    the exception it raised), in the order given, once all have returned."""
    answers: list[Any] = [None] * len(commands)

    def run(index: int) -> None:
        try:
            answers[index] = commands[index]()
        except Exception as error:  # noqa: BLE001 - the test inspects it
            answers[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(commands))]
    with ledger._held("test"):
        for thread in threads:
            thread.start()
        for _ in range(2_000):
            if ledger.waiting >= len(commands):
                break
            threading.Event().wait(0.005)
        assert ledger.waiting == len(commands)
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive()
    yield answers


def event_classes(aggregate: type[Any]) -> set[str]:
    """The names of an aggregate's event classes (less the library's default
    `Created`, unused where the aggregate names its own creation event)."""
    base = aggregate.Event
    classes = [
        value
        for value in vars(aggregate).values()
        if isinstance(value, type) and issubclass(value, base) and value is not base
    ]
    creations = [c for c in classes if issubclass(c, Aggregate.Created)]
    if len(creations) > 1:
        classes = [c for c in classes if c.__name__ != "Created"]
    return {c.__qualname__ for c in classes}


def every_kind_of_event(ledger: Ledger, manual_clock: ManualClock) -> None:
    """Every kind of allocation and pool event but Failed (a failing
    provisioner makes it) and ServerCharged (tests/test_server_cost_ledger.py)."""
    ledger.set_capacity(Resources(4000, 8192, 4))
    ledger.configure_pool("default", mcp_ports=(9000, 9050))
    ledger.set_quota("team-a", Resources(3000, 6144, 3))
    ledger.configure_scheduling(Scheduling(aging_seconds=60))
    ledger.configure_pool("default", idle_timeout_seconds=120)
    ledger.set_capacity(Resources(4000, 8192, 5))
    ledger.set_capacity(Resources(4000, 8192, 4))
    first = ledger.request(AllocationRequest("first", ("github",), 3), tenant="team-a")
    waiting = ledger.request(AllocationRequest("waits", (), 2), wait=True)
    timing_out = ledger.request(
        AllocationRequest("times-out", (), 4), wait=True, max_wait_seconds=30
    )
    ledger.release(first.allocation.allocation_id)  # grants "waits"
    manual_clock.advance(31)
    ledger.expire_due()  # "times-out" leaves the queue
    ledger.renew(waiting.allocation.allocation_id)
    low = ledger.request(AllocationRequest("low", (), 2, priority=Priority.LOW))
    ledger.request(AllocationRequest("critical", (), 4, priority=Priority.CRITICAL))
    ledger.request(AllocationRequest("refused", (), 40), wait=False)
    manual_clock.advance(7200)
    ledger.expire_due()
    ledger.stop_idle_servers()
    assert timing_out.allocation.allocation_id and low.allocation.allocation_id
