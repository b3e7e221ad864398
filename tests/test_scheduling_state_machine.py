"""A property-based state machine for scheduling: queueing, grants, preemption
and quotas, driven at random on a small pool, with the scheduling invariants
checked after every step and `verify` over the whole history at the end.

Unlike tests/test_ledger_state_machine.py it keeps no reference model of who
holds what; it checks the invariants themselves against the ledger's pool:
- a queued request never holds capacity;
- after any command, the queue holds nothing the policy would grant now
  (strict: the head does not fit; backfill: no entry fits);
- after any step, nothing queued is one that can never be granted (bigger
  than the pool's total, or than its tenant's quota);
- a request preempts only allocations that were live before it came, never
  one granted in the same decision;
- every reservation, and only live allocations, are counted (invariant 1);
- only strictly lower priorities are preempted, and no reservation passed its
  tenant's quota (both checked event by event by `verify`).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
)

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.scheduling import Scheduling
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Priority,
    QueuePolicy,
    Resources,
)

TENANTS = ("team-a", "team-b", None)


class SchedulingMachine(RuleBasedStateMachine):
    allocations = Bundle("allocations")

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.service = open_service(Settings(store="memory"), clock=self.clock)
        self.ledger = self.service.ledger
        self.ledger.set_capacity(Resources(6000, 12_288, 6))
        self.ids = iter(range(1_000_000))
        self.checked_queue = True

    def teardown(self) -> None:
        try:
            report = audit.verify(self.service)
            assert report.clean, report.as_dict()
        finally:
            self.service.close()

    @rule(
        target=allocations,
        workers=st.integers(0, 4),
        priority=st.sampled_from(list(Priority)),
        wait=st.booleans(),
        max_wait=st.sampled_from((None, 60, 600)),
        preempt=st.booleans(),
        tenant=st.sampled_from(TENANTS),
        servers=st.sampled_from(((), ("search",), ("search", "files"))),
    )
    def request(
        self,
        *,
        workers: int,
        priority: Priority,
        wait: bool,
        max_wait: int | None,
        preempt: bool,
        tenant: str | None,
        servers: tuple[str, ...],
    ) -> str:
        live_before = set(self.ledger.pool("default").reservations)
        result = self.ledger.request(
            AllocationRequest(f"job-{next(self.ids)}", servers, workers, priority),
            wait=wait,
            max_wait_seconds=max_wait,
            preempt=preempt,
            tenant=tenant,
        )
        allocation = result.allocation
        if allocation.state is AllocationState.QUEUED:
            assert wait
        for victim in result.preempted:
            assert victim in live_before, f"{victim} granted and preempted at once"
            taken = self.ledger.allocation(victim)
            assert taken.state is AllocationState.PREEMPTED
            assert taken.request.priority.rank < priority.rank
        self.checked_queue = True
        return allocation.allocation_id

    @rule(allocation_id=allocations)
    def release(self, allocation_id: str) -> None:
        self.ledger.release(allocation_id)
        self.checked_queue = True

    @rule(seconds=st.sampled_from((1, 30, 61, 300, 700)))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.checked_queue = False  # aging may reorder; nothing is served yet

    @rule()
    def sweep(self) -> None:
        self.ledger.expire_due()
        self.checked_queue = True

    @rule(
        tenant=st.sampled_from(("team-a", "team-b")),
        workers=st.sampled_from((None, 1, 2, 3)),
    )
    def quota(self, tenant: str, workers: int | None) -> None:
        limits = None if workers is None else Resources(workers * 1000, 12_288, workers)
        self.ledger.set_quota(tenant, limits)
        self.checked_queue = True

    @rule(
        policy=st.sampled_from(list(QueuePolicy)),
        aging=st.sampled_from((60, 600)),
    )
    def scheduling(self, policy: QueuePolicy, aging: int) -> None:
        self.ledger.configure_scheduling(
            Scheduling(queue_policy=policy, aging_seconds=aging)
        )
        self.checked_queue = True

    @rule(workers=st.integers(2, 8))
    def capacity(self, workers: int) -> None:
        self.ledger.set_capacity(Resources(workers * 1000, workers * 2048, workers))
        self.checked_queue = True

    @invariant()
    def queued_requests_hold_nothing_and_reservations_are_live(self) -> None:
        pool = self.ledger.pool("default")
        held = Resources()
        for reservation in pool.reservations.values():
            allocation = self.ledger.allocation(reservation.allocation_id)
            assert allocation.state.is_live, allocation.state
            held = held + reservation.resources
        assert held == pool.reserved
        for entry in pool.queue.values():
            assert entry.allocation_id not in pool.reservations
            waiting = self.ledger.allocation(entry.allocation_id)
            assert waiting.state is AllocationState.QUEUED

    @invariant()
    def nothing_grantable_is_left_waiting(self) -> None:
        if not self.checked_queue:
            return
        pool = self.ledger.pool("default")
        assert pool.next_to_grant(self.clock.now()) is None

    @invariant()
    def nothing_queued_can_never_be_granted(self) -> None:
        pool = self.ledger.pool("default")
        for entry in pool.queue.values():
            needed = pool.settings.resources_for(entry.request).as_dict()
            limits = [pool.settings.capacity.as_dict()]
            if entry.tenant in pool.quotas:
                limits.append(pool.quotas[entry.tenant].as_dict())
            for limit in limits:
                for dimension, amount in needed.items():
                    assert amount == 0 or amount <= limit[dimension], (
                        f"{entry.allocation_id} waits for {amount} {dimension} "
                        f"of at most {limit[dimension]}"
                    )


TestScheduling = SchedulingMachine.TestCase
TestScheduling.settings = settings(settings(), stateful_step_count=40)
