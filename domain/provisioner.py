"""The port through which an allocation's resources are set up and torn down."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WorkerSlot:
    """A worker reserved for an allocation, with the port it was given."""

    worker_id: str
    port: int


@dataclass(frozen=True)
class ServerSlot:
    """An MCP server an allocation uses; `started` if this allocation started it."""

    name: str
    port: int
    started: bool


@dataclass(frozen=True)
class Endpoints:
    """Where the allocation's workers and MCP servers can be reached."""

    workers: dict[str, str]
    servers: dict[str, str]


class Provisioner(Protocol):
    """Sets up what an allocation reserved. Raising leaves the allocation failed.

    Every call names the `pool` (keyword) the allocation or server belongs
    to: a provisioner may run each pool's servers and workers in a different
    place, and uses the pool's settings (e.g. the host its endpoints carry).

    - `provision`: make the allocation's workers and MCP servers real (start
      a server that does not run yet on the port the pool assigned; attach
      to one that does) and answer where each is reached. Raising fails the
      allocation: the exception's message is recorded as its error, so it
      should name what failed (the server, and the last lines of its log).
    - `deprovision`: tear down what `provision` set up for this allocation
      only (its workers). Shared MCP servers are not stopped here: the pool
      stops a server once it has been idle too long (`stop_server`). Called
      again when a release, expiry or preemption happened while `provision`
      was still running; must tolerate being called twice.
    - `stop_server`: the pool no longer records the server `name` on `port`
      (idle too long, its port reclaimed, or its allocation failed): stop its
      process. A provisioner that can see the ledger should skip the stop
      when the pool has meanwhile recorded the server again on that port.
    - `instant_endpoints`: the allocation's endpoints when provisioning it
      needs nothing done outside (every server it names already runs,
      healthy, on its port, and it has no worker to start): the ledger then
      reserves and activates in ONE transaction, calling this inside the
      unit of work, while it holds its lock. So it must answer from what
      the provisioner already knows: never block, start or stop anything,
      nor call the ledger. None when `provision` has work to do: the ledger
      then takes the slow path below. Raising fails the allocation (in that
      same transaction). The answer is for this request only, one check
      (never a `bool` followed by `provision`: what it checked may change in
      between); a server that dies right after it answered is the same case
      as one that dies right after an activation (restarted, recorded).

    A provisioner whose `provision` and `deprovision` only work out
    endpoints, touching nothing outside, may say so with a class attribute
    `instant = True` (its `instant_endpoints` answers `provision`): a
    release is then one transaction too. Any other provisioner's
    `provision` runs between two transactions (the allocation is `pending`
    meanwhile), is never called inside a unit of work, and must tolerate
    being called again for the same allocation after a crash.
    """

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints: ...

    def instant_endpoints(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints | None: ...

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> None: ...

    def stop_server(self, name: str, port: int, *, pool: str) -> None: ...
