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

    A provisioner whose `provision` only works out endpoints, touching nothing
    outside, may say so with a class attribute `instant = True`: the ledger
    then reserves and activates in one transaction, so no crash can leave an
    allocation reserved but never provisioned. Any other provisioner runs
    between two transactions (the allocation is `pending` meanwhile), and must
    tolerate being called again for the same allocation after a crash.
    """

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
    ) -> Endpoints: ...

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
    ) -> None: ...

    def stop_server(self, name: str, port: int) -> None: ...
