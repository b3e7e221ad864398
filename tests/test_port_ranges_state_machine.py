"""A property-based state machine for pools' port ranges: requests, releases,
idle stops and range changes of two pools, interleaved at random.

It checks, after every step, against the ledger's pools:
- no port is held by two pools, nor twice in one pool (invariant 2);
- every port handed out by a request is inside its pool's ranges as they
  were then; ports held from earlier ranges are only ever given back;
- a range change is refused exactly when the rules of docs/provisioning.md
  ("Port ranges") say so: it overlaps the other pool's ranges, takes a port
  the other pool holds, puts a port the pool holds for one kind (a server's,
  a worker's) in its range for the other, or leaves fewer worker ports than
  the pool's workers; a refused change writes nothing;
- after a change, no idle MCP server is left outside its pool's MCP range;
and `verify` over the whole history at the end.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.values import (
    AllocationRequest,
    AllocationState,
    Resources,
)
from tests.ledger_support import sequential_ids

POOLS = ("a", "b")
SERVERS = ("git", "web", "db")
# Candidate ranges: small, so that they fill up; some of them overlap.
SPANS = (
    (40_000, 40_003),
    (40_004, 40_007),
    (40_002, 40_005),
    (40_008, 40_011),
    (40_012, 40_013),
    (40_010, 40_015),
)
START = {
    "a": PortRanges(40_000, 40_003, 40_004, 40_007),
    "b": PortRanges(40_008, 40_011, 40_012, 40_013),
}
WORKERS = 3


def _touch(first: tuple[int, int], other: tuple[int, int]) -> bool:
    return first[0] <= other[1] and other[0] <= first[1]


class PortRangeMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.service = open_service(
            Settings(store="memory"),
            clock=self.clock,
            new_allocation_id=sequential_ids(),
        )
        self.ledger = self.service.ledger
        for name in POOLS:
            ranges = START[name]
            self.ledger.configure_pool(
                name,
                capacity=Resources(64_000, 65_536, WORKERS),
                idle_timeout_seconds=60,
                worker_ports=ranges.workers,
                mcp_ports=ranges.mcp,
            )
        self.live: dict[str, str] = {}  # allocation id: pool

    def teardown(self) -> None:
        try:
            report = audit.verify(self.service)
            assert report.clean, report.as_dict()
        finally:
            self.service.close()

    def pool(self, name: str) -> Pool:
        return self.ledger.pool(name)

    @rule(
        pool=st.sampled_from(POOLS),
        servers=st.lists(st.sampled_from(SERVERS), unique=True, max_size=2),
        workers=st.integers(0, 2),
    )
    def request(self, pool: str, servers: list[str], workers: int) -> None:
        ranges = self.pool(pool).ports
        made = self.ledger.request(
            AllocationRequest("job", tuple(servers), workers=workers), pool=pool
        ).allocation
        if made.state is not AllocationState.ACTIVE:
            assert made.state is AllocationState.FAILED
            return
        self.live[made.allocation_id] = pool
        for slot in made.workers:
            assert ranges.has_worker_port(slot.port), (slot.port, ranges)
        for server in made.servers:
            if server.started:
                assert ranges.has_mcp_port(server.port), (server.port, ranges)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.live:
            return
        allocation_id = data.draw(st.sampled_from(list(self.live)))
        del self.live[allocation_id]
        self.ledger.release(allocation_id)

    @rule(seconds=st.sampled_from((10, 61)))
    def stop_idle(self, seconds: int) -> None:
        self.clock.advance(seconds)
        self.ledger.stop_idle_servers()

    @rule(
        pool=st.sampled_from(POOLS),
        workers=st.sampled_from((None, *SPANS)),
        mcp=st.sampled_from((None, *SPANS)),
    )
    def change_ranges(
        self,
        pool: str,
        workers: tuple[int, int] | None,
        mcp: tuple[int, int] | None,
    ) -> None:
        before = self.pool(pool)
        other = self.pool(next(p for p in POOLS if p != pool))
        wanted = before.ports.with_spans(workers=workers, mcp=mcp)
        refused = wanted != before.ports and (
            _touch(wanted.workers, wanted.mcp)
            or other.ports.overlaps(wanted)
            or any(wanted.has_port(port) for port in other.held_ports())
            or wanted.worker_count < WORKERS
            or any(
                wanted.has_worker_port(s.port)
                for s in before.servers.values()
                if s.references
            )
            or any(wanted.has_mcp_port(port) for port in before.worker_ports)
        )
        position = self.ledger.recorder.max_notification_id()
        try:
            self.ledger.configure_pool(pool, worker_ports=workers, mcp_ports=mcp)
        except InvalidRequestError:
            assert refused, (pool, wanted)
            assert self.ledger.recorder.max_notification_id() == position
            return
        assert not refused, (pool, wanted)
        after = self.pool(pool)
        assert after.ports == wanted
        for server in after.servers.values():
            if not wanted.has_mcp_port(server.port):
                assert server.references > 0, server  # idle ones were stopped
        kept = before.held_ports() - {
            s.port for s in before.servers.values() if s.references == 0
        }
        assert kept <= after.held_ports()  # nothing in use was moved

    @invariant()
    def no_port_is_held_twice(self) -> None:
        owners: dict[int, str] = {}
        for name in POOLS:
            pool = self.pool(name)
            servers = [s.port for s in pool.servers.values()]
            assert len(servers) == len(set(servers))
            held = set(servers) | pool.worker_ports
            assert not set(servers) & pool.worker_ports
            for port in held:
                assert owners.setdefault(port, name) == name, (port, owners)


TestPortRanges = PortRangeMachine.TestCase
TestPortRanges.settings = settings(
    settings(),
    max_examples=max(settings().max_examples // 2, 10),
    stateful_step_count=30,
)
