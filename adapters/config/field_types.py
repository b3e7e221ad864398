"""The types of the catalog's fields, and their checks: cores, MB, argv, ports.

The entries (entries.py) declare their fields with these. Units are the MCP
tools' (cpu in float cores, at most 3 decimals; memory in MB); the ledger
holds millicores and MiB, converted by `mcp.schemas.units.millicores` as the
tools do. Limits are the domain's. A field's mistake is a pydantic error of a
kind starting `catalog_` (`catalog.ERROR_KIND_PREFIX`), which `file.py` words
as one `CatalogError` line naming the file, the entry and the field.
"""

from __future__ import annotations

import ipaddress
import re
import string
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from allocation_ledger.adapters.mcp.schemas.units import (
    MAX_CPU_CORES,
    millicores,
)
from allocation_ledger.domain.pool_settings import (
    MAX_MEMORY_MIB,
    MAX_WORKERS_CAPACITY,
)
from allocation_ledger.domain.ports import HIGHEST_PORT, LOWEST_PORT

SERVER_PLACEHOLDERS = ("port", "host")
WORKER_PLACEHOLDERS = ("port", "worker_id", "allocation_id")


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
