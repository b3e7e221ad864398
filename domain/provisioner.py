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
    """Sets up what an allocation reserved. Raising leaves the allocation failed."""

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
