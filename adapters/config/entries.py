"""The entries of the config file's catalog: `[mcp_servers.NAME]` and `[pools.NAME]`.

`McpServerEntry` says how to run one MCP server and what each allocation
naming it costs; `PoolEntry` says how big one pool is, how its workers start
and are found ready, and which ports it uses (docs/provisioning.md,
"Catalog"). Their fields' types and checks are in `field_types.py`;
`catalog.py` holds the entries in the `Catalog`, whose own checks span
entries.
"""

from __future__ import annotations

import dataclasses
import string
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from allocation_ledger.adapters.config.field_types import (
    Cores,
    EndpointPath,
    Megabytes,
    PortSpan,
    ServerArgv,
    WorkerArgv,
    WorkerSlots,
    _check_env,
    _check_host,
)
from allocation_ledger.adapters.mcp.schemas.units import millicores
from allocation_ledger.domain.pool_settings import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    MAX_IDLE_TIMEOUT_SECONDS,
)
from allocation_ledger.domain.values import Resources

DEFAULT_SERVER_PATH = "/mcp"
DEFAULT_START_TIMEOUT_SECONDS = 30.0
DEFAULT_WORKER_START_TIMEOUT_SECONDS = 30.0
"""How long a started worker may take to be ready (`worker_start_timeout_seconds`)."""
DEFAULT_WORKER_SETTLE_SECONDS = 1.0
"""How long a worker checked by `running` keeps running to be ready
(`worker_settle_seconds`)."""
MAX_WORKER_WAIT_SECONDS = 3600.0
DEFAULT_ADVERTISE_HOST = "localhost"
Transport = Literal["stdio", "http"]
WorkerReady = Literal["auto", "port", "running"]
"""How a started worker is found ready (`worker_ready`): `port`, when a TCP
connection to its port succeeds; `running`, when it still runs
`worker_settle_seconds` after its start; `auto`, `port` when its command
uses `{port}`, else `running`."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _touch(one: tuple[int, int], other: tuple[int, int]) -> bool:
    return one[0] <= other[1] and other[0] <= one[1]


# -- the entries ---------------------------------------------------------------


class McpServerEntry(_Entry):
    """One `[mcp_servers.NAME]` table: how to run the server, what it costs."""

    command: ServerArgv = Field(
        description=(
            "The server's argv, run without a shell. May use {port} and {host} "
            "(where it must listen, for transport http)."
        )
    )
    transport: Transport = Field(
        "stdio",
        description=(
            "stdio: the ledger bridges its stdin/stdout to streamable HTTP on "
            "the server's port; http: it listens on {host}:{port} itself."
        ),
    )
    path: EndpointPath = Field(
        DEFAULT_SERVER_PATH, description="Path of its streamable HTTP endpoint."
    )
    env: Annotated[dict[str, str], AfterValidator(_check_env)] = Field(
        default_factory=dict, description="Environment variables added for it."
    )
    cpu: Cores = Field(
        0.0, description="Cores reserved for each allocation that names it."
    )
    memory: Megabytes = Field(
        0, description="MB reserved for each allocation that names it."
    )
    start_timeout_seconds: float = Field(
        DEFAULT_START_TIMEOUT_SECONDS,
        gt=0,
        allow_inf_nan=False,
        description="How long it may take to answer MCP after it is started.",
    )
    idle_timeout_seconds: int = Field(
        DEFAULT_IDLE_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_IDLE_TIMEOUT_SECONDS,
        description="Seconds with no allocation naming it before it stops.",
    )

    @property
    def cost(self) -> Resources:
        """What each allocation naming it holds, in domain units."""
        return Resources(millicores(self.cpu), self.memory, 0)

    def argv(self, *, port: int, host: str) -> list[str]:
        """The command with {port} and {host} filled in ({{ and }} are braces)."""
        return [arg.format_map({"port": port, "host": host}) for arg in self.command]


class PoolEntry(_Entry):
    """One `[pools.NAME]` table. A total or worker size left out keeps the
    pool's current value (a new pool starts from the defaults: 16 cores,
    32768 MB, 10 workers of 1 core and 2048 MB)."""

    cpu: Cores | None = Field(None, description="Cores in all.")
    memory: Megabytes | None = Field(None, description="MB in all.")
    workers: WorkerSlots | None = Field(None, description="Worker slots in all.")
    worker_cpu: Cores | None = Field(None, description="Cores of one worker.")
    worker_memory: Megabytes | None = Field(None, description="MB of one worker.")
    worker_command: WorkerArgv | None = Field(
        None,
        description=(
            "argv that starts one worker; may use {port}, {worker_id} and "
            "{allocation_id}. Without it, workers are addresses only."
        ),
    )
    worker_ready: WorkerReady = Field(
        "auto",
        description=(
            "How a started worker is found ready: port (a connection to its "
            "port succeeds), running (it still runs worker_settle_seconds "
            "after its start), auto (port when worker_command uses {port}, "
            "else running). Its allocation stays pending until then."
        ),
    )
    worker_start_timeout_seconds: float = Field(
        DEFAULT_WORKER_START_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_WORKER_WAIT_SECONDS,
        allow_inf_nan=False,
        description=(
            "How long a started worker may take to be ready before its "
            "allocation fails (provisioning_failed)."
        ),
    )
    worker_settle_seconds: float = Field(
        DEFAULT_WORKER_SETTLE_SECONDS,
        ge=0,
        le=MAX_WORKER_WAIT_SECONDS,
        allow_inf_nan=False,
        description=(
            "For worker_ready running: how long a started worker must keep "
            "running to be ready (0: as soon as its program runs)."
        ),
    )
    advertise_host: Annotated[str, AfterValidator(_check_host)] = Field(
        DEFAULT_ADVERTISE_HOST,
        description="Host name put in the endpoints handed out from this pool.",
    )
    mcp_ports: PortSpan | None = Field(
        None,
        description=(
            "[first, last]: the ports its MCP servers are started on. Default: "
            "the pool's (9000-9099 for default, a block from 10000 for others)."
        ),
    )
    worker_ports: PortSpan | None = Field(
        None,
        description=(
            "[first, last]: the ports its workers get; at least `workers` of "
            "them. Default: the pool's (from 8000 for default)."
        ),
    )

    @model_validator(mode="after")
    def _ranges_apart(self) -> PoolEntry:
        mcp, workers = self.mcp_span, self.worker_span
        if mcp is not None and workers is not None and _touch(mcp, workers):
            raise PydanticCustomError(
                "catalog_port_overlap",
                "mcp_ports: [{first}, {last}] overlaps worker_ports "
                "[{other_first}, {other_last}]",
                {
                    "first": mcp[0],
                    "last": mcp[1],
                    "other_first": workers[0],
                    "other_last": workers[1],
                },
            )
        if (
            workers is not None
            and self.workers is not None
            and workers[1] - workers[0] + 1 < self.workers
        ):
            raise PydanticCustomError(
                "catalog_port_room",
                "worker_ports: [{first}, {last}] has {count} ports, fewer than "
                "its {workers} workers",
                {
                    "first": workers[0],
                    "last": workers[1],
                    "count": workers[1] - workers[0] + 1,
                    "workers": self.workers,
                },
            )
        return self

    @model_validator(mode="after")
    def _settle_within_timeout(self) -> PoolEntry:
        if self.worker_settle_seconds >= self.worker_start_timeout_seconds:
            raise PydanticCustomError(
                "catalog_worker_settle",
                "worker_settle_seconds: {settle} must be less than "
                "worker_start_timeout_seconds ({timeout})",
                {
                    "settle": f"{self.worker_settle_seconds:g}",
                    "timeout": f"{self.worker_start_timeout_seconds:g}",
                },
            )
        return self

    @property
    def mcp_span(self) -> tuple[int, int] | None:
        """`mcp_ports` as (first, last), or None."""
        return (
            None if self.mcp_ports is None else (self.mcp_ports[0], self.mcp_ports[1])
        )

    @property
    def worker_span(self) -> tuple[int, int] | None:
        """`worker_ports` as (first, last), or None."""
        if self.worker_ports is None:
            return None
        return self.worker_ports[0], self.worker_ports[1]

    def spans(self) -> list[tuple[str, tuple[int, int]]]:
        """The ranges this entry gives, by key: [("mcp_ports", (first, last)), ...]."""
        given = [("mcp_ports", self.mcp_span), ("worker_ports", self.worker_span)]
        return [(key, span) for key, span in given if span is not None]

    def capacity(self, current: Resources) -> Resources | None:
        """The totals this entry sets over `current` (None: it sets none)."""
        if self.cpu is None and self.memory is None and self.workers is None:
            return None
        return Resources(
            current.cpu_millicores if self.cpu is None else millicores(self.cpu),
            current.memory_mib if self.memory is None else self.memory,
            current.workers if self.workers is None else self.workers,
        )

    def worker_size(self, current: Resources) -> Resources | None:
        """One worker's size this entry sets over `current` (None: it sets none)."""
        if self.worker_cpu is None and self.worker_memory is None:
            return None
        return dataclasses.replace(
            current,
            cpu_millicores=(
                current.cpu_millicores
                if self.worker_cpu is None
                else millicores(self.worker_cpu)
            ),
            memory_mib=(
                current.memory_mib if self.worker_memory is None else self.worker_memory
            ),
        )

    def worker_argv(
        self, *, port: int, worker_id: str, allocation_id: str
    ) -> list[str]:
        """The worker command with its placeholders filled in ([] if none)."""
        values = {"port": port, "worker_id": worker_id, "allocation_id": allocation_id}
        return [arg.format_map(values) for arg in self.worker_command or ()]

    @property
    def worker_readiness(self) -> Literal["port", "running"]:
        """How this pool's workers are found ready: `worker_ready`, with
        `auto` resolved (`port` when worker_command uses {port})."""
        if self.worker_ready != "auto":
            return self.worker_ready
        uses_port = any(
            name == "port"
            for argument in self.worker_command or ()
            for _, name, _, _ in string.Formatter().parse(argument)
        )
        return "port" if uses_port else "running"
