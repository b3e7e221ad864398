"""Port bookkeeping: the ports each pool hands out, and the lowest free ones.

Pools share the host's port space, so every pool has ranges of its own that
overlap no other pool's: one for its workers, one for its MCP servers. A
pool created without ranges gets a block by the original rule: the default
pool the original ones (workers from 8000, MCP servers 9000-9099), the n-th
other pool 1,000 worker ports and 100 MCP ports from 10000 + 1100 n (or the
lowest such block no other pool's ranges touch). The catalog may give a pool
ranges of its own (`worker_ports`, `mcp_ports`; docs/provisioning.md). Within
its ranges a pool always hands out the lowest free port (design contract,
"Domain model").

Changing a pool's ranges applies to new assignments only: ports that live
allocations hold outside the new ranges stay theirs until they are given
back (an idle MCP server outside the new range is stopped at once). So a
range is checked against the other pools' ranges and against every port they
still hold (`ranges_conflict`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from allocation_ledger.domain.errors import InvalidRequestError

MCP_PORT_FIRST = 9000
MCP_PORT_LAST = 9099
WORKER_PORT_FIRST = 8000
WORKER_PORT_LAST = 8999
MCP_PORTS_PER_POOL = MCP_PORT_LAST - MCP_PORT_FIRST + 1
WORKER_PORTS_PER_POOL = WORKER_PORT_LAST - WORKER_PORT_FIRST + 1
PORTS_PER_BLOCK = WORKER_PORTS_PER_POOL + MCP_PORTS_PER_POOL
OTHER_POOLS_FIRST_PORT = 10_000
LOWEST_PORT = 1
HIGHEST_PORT = 65_535
MAX_OTHER_POOLS = (HIGHEST_PORT - OTHER_POOLS_FIRST_PORT + 1) // PORTS_PER_BLOCK
"""How many pools besides the default one fit in the host's port space (50)."""

WORKER_PORTS_FIELD = "worker_ports"
MCP_PORTS_FIELD = "mcp_ports"
Span = tuple[int, int]
"""(first, last) of a range of ports, both included."""


@dataclass(frozen=True)
class PortRanges:
    """The ports a pool hands out: workers from `worker_first` to
    `worker_last`, MCP servers from `mcp_first` to `mcp_last` (inclusive).
    The defaults are the original ranges, the default pool's."""

    worker_first: int = WORKER_PORT_FIRST
    worker_last: int = WORKER_PORT_LAST
    mcp_first: int = MCP_PORT_FIRST
    mcp_last: int = MCP_PORT_LAST

    @classmethod
    def for_other_pool(cls, index: int) -> PortRanges:
        """Block `index` (from 0) of the pools other than the default: 1,000
        worker ports, then 100 MCP ports, from 10000 + 1100 * index."""
        start = OTHER_POOLS_FIRST_PORT + index * PORTS_PER_BLOCK
        return cls(
            worker_first=start,
            worker_last=start + WORKER_PORTS_PER_POOL - 1,
            mcp_first=start + WORKER_PORTS_PER_POOL,
            mcp_last=start + PORTS_PER_BLOCK - 1,
        )

    @property
    def workers(self) -> Span:
        """(first, last) of the worker range."""
        return self.worker_first, self.worker_last

    @property
    def mcp(self) -> Span:
        """(first, last) of the MCP server range."""
        return self.mcp_first, self.mcp_last

    @property
    def worker_count(self) -> int:
        """How many ports the worker range has."""
        return self.worker_last - self.worker_first + 1

    @property
    def mcp_count(self) -> int:
        """How many ports the MCP server range has."""
        return self.mcp_last - self.mcp_first + 1

    def has_worker_port(self, port: int) -> bool:
        """The port is in the worker range."""
        return self.worker_first <= port <= self.worker_last

    def has_mcp_port(self, port: int) -> bool:
        """The port is in the MCP server range."""
        return self.mcp_first <= port <= self.mcp_last

    def has_port(self, port: int) -> bool:
        """The port is in either range."""
        return self.has_worker_port(port) or self.has_mcp_port(port)

    def spans(self) -> tuple[Span, Span]:
        """(first, last) of the worker range, then of the MCP range."""
        return self.workers, self.mcp

    def overlaps(self, other: PortRanges) -> bool:
        """A port is in a range of both."""
        return any(
            first <= other_last and other_first <= last
            for first, last in self.spans()
            for other_first, other_last in other.spans()
        )

    def with_spans(
        self, *, workers: Span | None = None, mcp: Span | None = None
    ) -> PortRanges:
        """These ranges with the worker and/or MCP range replaced (None: kept)."""
        changed = self
        if workers is not None:
            changed = replace(changed, worker_first=workers[0], worker_last=workers[1])
        if mcp is not None:
            changed = replace(changed, mcp_first=mcp[0], mcp_last=mcp[1])
        return changed

    def as_dict(self) -> dict[str, int]:
        """The ranges as stored in a Pool's events and its snapshots."""
        return {
            "worker_first": self.worker_first,
            "worker_last": self.worker_last,
            "mcp_first": self.mcp_first,
            "mcp_last": self.mcp_last,
        }


def validate_ranges(ranges: PortRanges) -> None:
    """Check a pool's ranges on their own: each from LOWEST_PORT to
    HIGHEST_PORT with its first port not after its last, and the worker and
    MCP ranges sharing no port. Raises InvalidRequestError naming the range
    (`worker_ports` or `mcp_ports`)."""
    for field, (first, last) in (
        (WORKER_PORTS_FIELD, ranges.workers),
        (MCP_PORTS_FIELD, ranges.mcp),
    ):
        for port in (first, last):
            if isinstance(port, bool) or not isinstance(port, int):
                msg = f"{field} must be whole port numbers, got {port!r}"
                raise InvalidRequestError(msg, field=field)
            if not LOWEST_PORT <= port <= HIGHEST_PORT:
                msg = (
                    f"{field} must be ports from {LOWEST_PORT} to {HIGHEST_PORT}, "
                    f"got {port}"
                )
                raise InvalidRequestError(msg, field=field)
        if first > last:
            msg = (
                f"{field} must be [first, last] with first <= last, "
                f"got [{first}, {last}]"
            )
            raise InvalidRequestError(msg, field=field)
    worker_first, worker_last = ranges.workers
    if ranges.mcp_first <= worker_last and worker_first <= ranges.mcp_last:
        msg = (
            f"{MCP_PORTS_FIELD} [{ranges.mcp_first}, {ranges.mcp_last}] overlaps "
            f"{WORKER_PORTS_FIELD} [{worker_first}, {worker_last}]"
        )
        raise InvalidRequestError(msg, field=MCP_PORTS_FIELD)


def validate_worker_room(ranges: PortRanges, workers: int) -> None:
    """The worker range has a port for each of the pool's `workers` slots.
    Raises InvalidRequestError (field `workers`) when it has not."""
    if workers > ranges.worker_count:
        first, last = ranges.workers
        msg = (
            f"capacity workers must be at most {ranges.worker_count}, the size of "
            f"the pool's {WORKER_PORTS_FIELD} [{first}, {last}], got {workers}"
        )
        raise InvalidRequestError(msg, field="workers")


@dataclass(frozen=True)
class PortConflict:
    """Why ranges cannot be a pool's: they overlap `other`'s `range` (its
    ranges), or take a port `other` still holds (`port`; `other` empty: the
    pool itself holds it for the other kind). `field`: which of the pool's
    ranges (`worker_ports` or `mcp_ports`)."""

    field: str
    other: str
    other_range: Span | None
    port: int | None

    def describe(self, ranges: PortRanges) -> str:
        """One line for the operator."""
        first, last = ranges.workers if self.field == WORKER_PORTS_FIELD else ranges.mcp
        mine = f"{self.field} [{first}, {last}]"
        if self.other_range is not None:
            other_first, other_last = self.other_range
            return (
                f"{mine} overlaps the ports of pool {self.other!r} "
                f"[{other_first}, {other_last}]"
            )
        if not self.other:
            held_by = "a worker" if self.field == MCP_PORTS_FIELD else "an MCP server"
            return (
                f"{mine} takes port {self.port}, which {held_by} of this pool "
                "still holds (from its earlier ranges)"
            )
        return (
            f"{mine} takes port {self.port}, which pool {self.other!r} still "
            "holds (from its earlier ranges)"
        )


def ranges_conflict(
    ranges: PortRanges,
    others: Mapping[str, PortRanges],
    held: Mapping[str, Iterable[int]],
) -> PortConflict | None:
    """The first reason `ranges` cannot be a pool's beside the `others`
    (pool name to its ranges) and the ports other pools hold (`held`, pool
    name to ports; only those outside their ranges matter), or None."""
    for field, (first, last) in (
        (WORKER_PORTS_FIELD, ranges.workers),
        (MCP_PORTS_FIELD, ranges.mcp),
    ):
        for name, other in sorted(others.items()):
            for other_first, other_last in other.spans():
                if first <= other_last and other_first <= last:
                    return PortConflict(field, name, (other_first, other_last), None)
        for name, ports in sorted(held.items()):
            for port in sorted(ports):
                if first <= port <= last:
                    return PortConflict(field, name, None, port)
    return None


def own_conflict(
    ranges: PortRanges, server_ports: Iterable[int], worker_ports: Iterable[int]
) -> PortConflict | None:
    """Why a pool's new `ranges` cannot be, given the ports it holds now
    (`server_ports` of its MCP servers, `worker_ports` of its live workers):
    a new range may not take a port the pool holds for the other kind (a
    worker range over a server's port, or the reverse), or it would hand it
    out again. None when they may."""
    for port in sorted(server_ports):
        if ranges.has_worker_port(port):
            return PortConflict(WORKER_PORTS_FIELD, "", None, port)
    for port in sorted(worker_ports):
        if ranges.has_mcp_port(port):
            return PortConflict(MCP_PORTS_FIELD, "", None, port)
    return None


def free_block(
    preferred: int, others: Mapping[str, PortRanges], held: Mapping[str, Iterable[int]]
) -> PortRanges | None:
    """Block `preferred` of the pools other than the default (see
    `PortRanges.for_other_pool`) if nothing of another pool is in it, else the
    lowest such block; None when every block is taken."""
    candidates = [preferred, *(i for i in range(MAX_OTHER_POOLS) if i != preferred)]
    for index in candidates:
        if index >= MAX_OTHER_POOLS:
            continue
        block = PortRanges.for_other_pool(index)
        if ranges_conflict(block, others, held) is None:
            return block
    return None


def free_mcp_ports(ranges: PortRanges, ports: Iterable[int]) -> int:
    """MCP ports in `ranges` not taken by a running or idle server on one of
    `ports` (servers outside the range, left from earlier ranges, take none
    of it)."""
    return ranges.mcp_count - sum(1 for port in ports if ranges.has_mcp_port(port))


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
    """The `count` lowest ports of the worker range not in `used`.

    Never more workers than the pool's capacity are live, and the capacity
    is at most the range's size (`validate_worker_room`), so they are found.
    Raises RuntimeError if not (a broken invariant, not a refusal).
    """
    ports: list[int] = []
    for port in range(ranges.worker_first, ranges.worker_last + 1):
        if len(ports) == count:
            break
        if port not in used:
            ports.append(port)
    if len(ports) < count:
        msg = f"only {len(ports)} free worker ports for {count} workers"
        raise RuntimeError(msg)
    return ports
