"""The catalog in the config file: which MCP servers exist, which pools, how big.

The TOML file named by ALLOCATION_LEDGER_CONFIG holds the settings at its
top level (`settings.py`) and the catalog in three keys, a public contract
that other tools write (docs/provisioning.md, "Catalog"):

    provisioner = "process"                # or "endpoints"; optional
    [mcp_servers.time]                     # McpServerEntry, one per server name
    command = ["python", "-m", "mcp_server_time"]
    cpu = 0.25                             # cores, per allocation naming it
    [pools.big-box]                        # PoolEntry, one per pool name
    cpu = 64                               # cores in all
    memory = 262144                        # MB in all

Units are the MCP tools' (cpu in float cores, at most 3 decimals; memory in
MB); the ledger holds millicores and MiB, converted by `mcp.schemas.units.millicores`
as the tools do. Limits and name rules are the domain's. Mistakes are
`CatalogError`s worded as one line naming the file, the entry and the field,
e.g. `config.toml: [mcp_servers.time] transport: must be "stdio" or "http",
got "tcp"`; `file.py` reads the file and words them.
`apply.apply_catalog` makes the ledger's pools what the catalog says.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import string
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from allocation_ledger.adapters.mcp.schemas.units import (
    MAX_CPU_CORES,
    millicores,
)
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.pool_settings import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    MAX_IDLE_TIMEOUT_SECONDS,
    MAX_MEMORY_MIB,
    MAX_WORKERS_CAPACITY,
)
from allocation_ledger.domain.ports import HIGHEST_PORT, LOWEST_PORT, MAX_OTHER_POOLS
from allocation_ledger.domain.values import (
    Resources,
    validate_pool_name,
    validate_server_name,
)

ERROR_KIND_PREFIX = "catalog_"
"""The kinds of the catalog's own validation errors start so; they are worded."""
CONFIG_ACTOR = "config"
"""The actor on the events that applying the catalog records."""
CATALOG_KEYS = ("provisioner", "mcp_servers", "pools")
"""The config file's top-level keys that belong to the catalog, not the settings."""
SERVER_PLACEHOLDERS = ("port", "host")
WORKER_PLACEHOLDERS = ("port", "worker_id", "allocation_id")
DEFAULT_SERVER_PATH = "/mcp"
DEFAULT_START_TIMEOUT_SECONDS = 30.0
DEFAULT_WORKER_START_TIMEOUT_SECONDS = 30.0
"""How long a started worker may take to be ready (`worker_start_timeout_seconds`)."""
DEFAULT_WORKER_SETTLE_SECONDS = 1.0
"""How long a worker checked by `running` keeps running to be ready
(`worker_settle_seconds`)."""
MAX_WORKER_WAIT_SECONDS = 3600.0
DEFAULT_ADVERTISE_HOST = "localhost"
Provisioner = Literal["process", "endpoints"]
Transport = Literal["stdio", "http"]
WorkerReady = Literal["auto", "port", "running"]
"""How a started worker is found ready (`worker_ready`): `port`, when a TCP
connection to its port succeeds; `running`, when it still runs
`worker_settle_seconds` after its start; `auto`, `port` when its command
uses `{port}`, else `running`."""


class CatalogError(Exception):
    """A mistake in the config file, worded as one line for the operator.

    `path`: the file as named; `entry`: the table, e.g. ``pools.big-box``
    (None for the top level); `field`: the key, e.g. ``cpu`` or ``command[2]``
    (None for the entry or file as a whole); `problem`: what is wrong.
    """

    def __init__(
        self,
        path: str | Path,
        entry: str | None,
        field: str | None,
        problem: str,
        *,
        field_in_problem: bool = False,
    ) -> None:
        self.path = str(path)
        self.entry = entry
        self.field = field
        self.problem = problem
        self._label = None if field_in_problem else field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"[{self.entry}] " if self.entry else ""
        label = f"{self._label}: " if self._label else ""
        return f"{self.path}: {where}{label}{self.problem}"


# -- field types -------------------------------------------------------------


def _whole_millicores(cpu: float) -> float:
    try:
        millicores(cpu)
    except ValueError:
        raise PydanticCustomError(
            "catalog_millicores",
            "must be cores with at most 3 decimal places (e.g. 0.25), got {cpu}",
            {"cpu": cpu},
        ) from None
    return cpu


def _check_argument(allowed: tuple[str, ...]) -> AfterValidator:
    """An argv item: non-empty, and only these {placeholders}."""
    known = ", ".join("{" + name + "}" for name in allowed)

    def check(argument: str) -> str:
        if not argument:
            raise PydanticCustomError("catalog_empty_argument", "must not be empty")
        if "\0" in argument:
            raise PydanticCustomError("catalog_nul", "must not contain a NUL character")
        try:
            fields = list(string.Formatter().parse(argument))
        except ValueError:
            raise PydanticCustomError(
                "catalog_braces",
                "has an unmatched brace; write {{ or }} for a literal one",
            ) from None
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in allowed or spec or conversion:
                text = "{" + name + (f"!{conversion}" if conversion else "")
                text += (f":{spec}" if spec else "") + "}"
                raise PydanticCustomError(
                    "catalog_placeholder",
                    'unknown placeholder "{text}" (known: {known})',
                    {"text": text, "known": known},
                )
        return argument

    return AfterValidator(check)


def _check_command(argv: list[str]) -> list[str]:
    if not argv:
        raise PydanticCustomError(
            "catalog_empty_command",
            "must name the program: a non-empty list of strings",
        )
    return argv


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise PydanticCustomError(
                "catalog_env_name",
                'variable name "{name}" must be non-empty, without "=" or NUL',
                {"name": name},
            )
        if "\0" in value:
            raise PydanticCustomError(
                "catalog_env_value",
                "{name} must not contain a NUL character",
                {"name": name},
            )
    return env


_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^{_HOST_LABEL}(?:\.{_HOST_LABEL})*$")


def _check_host(host: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if len(host) > 253 or not _HOST_NAME.match(host):
            raise PydanticCustomError(
                "catalog_host",
                "must be a host name or an IP address (IPv6 without brackets), "
                'got "{host}"',
                {"host": host},
            ) from None
    return host


Cores = Annotated[
    float,
    Field(ge=0, le=MAX_CPU_CORES, allow_inf_nan=False),
    AfterValidator(_whole_millicores),
]
"""CPU in cores (float, at most 3 decimals); the domain holds millicores."""
Megabytes = Annotated[int, Field(ge=0, le=MAX_MEMORY_MIB)]
"""Memory in MB; the domain holds the same integer as MiB."""
WorkerSlots = Annotated[int, Field(ge=0, le=MAX_WORKERS_CAPACITY)]
ServerArgv = Annotated[
    list[Annotated[str, _check_argument(SERVER_PLACEHOLDERS)]],
    AfterValidator(_check_command),
]
WorkerArgv = Annotated[
    list[Annotated[str, _check_argument(WORKER_PLACEHOLDERS)]],
    AfterValidator(_check_command),
]
_PATH = re.compile(r"^/[A-Za-z0-9._~/-]*$")


def _check_path(path: str) -> str:
    if not _PATH.match(path):
        raise PydanticCustomError(
            "catalog_path",
            'must start with "/" and use only letters, digits and ._~/-, got "{path}"',
            {"path": path},
        )
    return path


EndpointPath = Annotated[str, AfterValidator(_check_path)]


def _check_port_range(span: list[int]) -> tuple[int, int]:
    if len(span) != 2:
        raise PydanticCustomError(
            "catalog_port_range",
            "must be [first, last], two port numbers, got {count} numbers",
            {"count": len(span)},
        )
    first, last = span
    for port in (first, last):
        if not LOWEST_PORT <= port <= HIGHEST_PORT:
            raise PydanticCustomError(
                "catalog_port_range",
                "ports must be from {low} to {high}, got {port}",
                {"low": LOWEST_PORT, "high": HIGHEST_PORT, "port": port},
            )
    if first > last:
        raise PydanticCustomError(
            "catalog_port_range",
            "must be [first, last] with first <= last, got [{first}, {last}]",
            {"first": first, "last": last},
        )
    return first, last


PortSpan = Annotated[list[int], AfterValidator(_check_port_range)]
"""[first, last] of a range of ports, both included; held as a tuple."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _touch(one: tuple[int, int], other: tuple[int, int]) -> bool:
    return one[0] <= other[1] and other[0] <= one[1]


def entry_name(table: str, name: str) -> str:
    """An entry as its TOML table header names it: pools.big-box, pools."a.b"."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return f"{table}.{name}"
    return f"{table}.{json.dumps(name, ensure_ascii=False)}"


# -- the catalog ---------------------------------------------------------------


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


class Catalog(_Entry):
    """The MCP servers and pools a config file names, and the provisioner.

    Built from a file by `file.load_catalog` (or `Settings().catalog`),
    which words every mistake as one `CatalogError` line. Names follow the
    domain's rules; at most MAX_OTHER_POOLS pools besides the default one.
    """

    mcp_servers: dict[str, McpServerEntry] = Field(default_factory=dict)
    pools: dict[str, PoolEntry] = Field(default_factory=dict)
    provisioner: Provisioner | None = Field(
        None,
        description=(
            "process: the ledger runs the servers and workers; endpoints: it "
            "hands out addresses only. Default: see effective_provisioner."
        ),
    )

    @model_validator(mode="after")
    def _names_and_count(self) -> Catalog:
        try:
            for server in self.mcp_servers:
                validate_server_name(server)
            for pool in self.pools:
                validate_pool_name(pool)
        except InvalidRequestError as error:
            raise PydanticCustomError("catalog_name", str(error)) from None
        others = [name for name in self.pools if name != DEFAULT_POOL]
        if len(others) > MAX_OTHER_POOLS:
            raise PydanticCustomError(
                "catalog_pool_count",
                "names {count} pools besides {default}; at most {most} are allowed",
                {
                    "count": len(others),
                    "default": DEFAULT_POOL,
                    "most": MAX_OTHER_POOLS,
                },
            )
        self._ranges_apart_across_pools()
        return self

    def _ranges_apart_across_pools(self) -> None:
        seen: list[tuple[str, str, tuple[int, int]]] = []
        for pool, entry in self.pools.items():
            for key, span in entry.spans():
                for other_pool, other_key, other in seen:
                    if _touch(span, other):
                        raise PydanticCustomError(
                            "catalog_port_overlap",
                            "[{entry}] {key}: [{first}, {last}] overlaps "
                            "[{other_entry}] {other_key} [{other_first}, {other_last}]",
                            {
                                "entry": entry_name("pools", pool),
                                "key": key,
                                "first": span[0],
                                "last": span[1],
                                "other_entry": entry_name("pools", other_pool),
                                "other_key": other_key,
                                "other_first": other[0],
                                "other_last": other[1],
                            },
                        )
                seen.append((pool, key, span))

    @property
    def effective_provisioner(self) -> Provisioner:
        """`provisioner` if given; else process when the catalog names an MCP
        server or a pool has a worker_command, endpoints otherwise."""
        if self.provisioner is not None:
            return self.provisioner
        if self.mcp_servers or any(p.worker_command for p in self.pools.values()):
            return "process"
        return "endpoints"

    def server_costs(self) -> dict[str, Resources]:
        """Each named server's cost per allocation, in domain units (zeros left out)."""
        return {
            name: entry.cost
            for name, entry in sorted(self.mcp_servers.items())
            if entry.cost != Resources()
        }
