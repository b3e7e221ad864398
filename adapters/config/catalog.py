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

The two kinds of entry are in `entries.py`, their fields' types, units (the
MCP tools': cores and MB) and checks in `field_types.py`; here are the
catalog as a whole, its checks across entries, and its errors. Limits and
name rules are the domain's. Mistakes are `CatalogError`s worded as one line
naming the file, the entry and the field, e.g. `config.toml:
[mcp_servers.time] transport: must be "stdio" or "http", got "tcp"`;
`file.py` reads the file and words them. `apply.apply_catalog` makes the
ledger's pools what the catalog says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from allocation_ledger.adapters.config.entries import (
    McpServerEntry,
    PoolEntry,
    _Entry,
    _touch,
)
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.ports import MAX_OTHER_POOLS
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
Provisioner = Literal["process", "endpoints"]


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


def entry_name(table: str, name: str) -> str:
    """An entry as its TOML table header names it: pools.big-box, pools."a.b"."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", name):
        return f"{table}.{name}"
    return f"{table}.{json.dumps(name, ensure_ascii=False)}"


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
