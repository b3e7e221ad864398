"""Port bookkeeping: the ports each pool hands out, and the lowest free ones.

Pools share the host's port space, so every pool has ranges of its own
(fixed when the pool is created): the default pool keeps the original ones
(workers from 8000, MCP servers 9000-9099), the n-th other pool gets 1,000
worker ports and 100 MCP ports from 10000 + 1100 n. Within its ranges a pool
always hands out the lowest free port (design contract, "Domain model").
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

MCP_PORT_FIRST = 9000
MCP_PORT_LAST = 9099
WORKER_PORT_FIRST = 8000
WORKER_PORT_LAST = 8999
MCP_PORTS_PER_POOL = MCP_PORT_LAST - MCP_PORT_FIRST + 1
WORKER_PORTS_PER_POOL = WORKER_PORT_LAST - WORKER_PORT_FIRST + 1
OTHER_POOLS_FIRST_PORT = 10_000
MAX_OTHER_POOLS = (65_535 - OTHER_POOLS_FIRST_PORT + 1) // (
    WORKER_PORTS_PER_POOL + MCP_PORTS_PER_POOL
)
"""How many pools besides the default one fit in the host's port space (50)."""


@dataclass(frozen=True)
class PortRanges:
    """The ports a pool hands out. Pools share the host's port space, so no
    two pools' ranges overlap: the default pool keeps the original ranges
    (workers from 8000, MCP servers 9000-9099); the n-th other pool gets
    1,000 worker ports and 100 MCP ports from 10000 + 1100 n."""

    worker_first: int = WORKER_PORT_FIRST
    worker_last: int = WORKER_PORT_LAST
    mcp_first: int = MCP_PORT_FIRST
    mcp_last: int = MCP_PORT_LAST

    @classmethod
    def for_other_pool(cls, index: int) -> PortRanges:
        """Ranges of the `index`-th pool other than the default (from 0)."""
        start = OTHER_POOLS_FIRST_PORT + index * (
            WORKER_PORTS_PER_POOL + MCP_PORTS_PER_POOL
        )
        return cls(
            worker_first=start,
            worker_last=start + WORKER_PORTS_PER_POOL - 1,
            mcp_first=start + WORKER_PORTS_PER_POOL,
            mcp_last=start + WORKER_PORTS_PER_POOL + MCP_PORTS_PER_POOL - 1,
        )

    def spans(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """(first, last) of the worker range, then of the MCP range."""
        return (self.worker_first, self.worker_last), (self.mcp_first, self.mcp_last)

    def as_dict(self) -> dict[str, int]:
        """The ranges as stored in a Pool's Created event and its snapshots."""
        return {
            "worker_first": self.worker_first,
            "worker_last": self.worker_last,
            "mcp_first": self.mcp_first,
            "mcp_last": self.mcp_last,
        }


def free_mcp_ports(ranges: PortRanges, running: int) -> int:
    """MCP ports not taken by one of the `running` servers (idle ones count
    as taken: they keep their port until they are stopped)."""
    return ranges.mcp_last - ranges.mcp_first + 1 - running


def lowest_free_mcp_port(ranges: PortRanges, used: Iterable[int]) -> int:
    """The lowest MCP port in `ranges` not in `used`.

    Raises RuntimeError when every port is taken: callers check the pool's
    shortfall (which counts MCP ports) before starting a server.
    """
    taken = set(used)
    for port in range(ranges.mcp_first, ranges.mcp_last + 1):
        if port not in taken:
            return port
    msg = "no free MCP server port"  # shortfall() rules this out
    raise RuntimeError(msg)


def lowest_free_worker_ports(
    ranges: PortRanges, used: Collection[int], count: int
) -> list[int]:
    """The `count` lowest worker ports from `ranges.worker_first` not in `used`.

    Never more than the pool's worker capacity are live, and that is at most
    the range's size, so the ports found stay inside the range.
    """
    ports: list[int] = []
    port = ranges.worker_first
    while len(ports) < count:
        if port not in used:
            ports.append(port)
        port += 1
    return ports
