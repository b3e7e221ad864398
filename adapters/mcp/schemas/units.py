"""Units at the MCP boundary, and what converts them.

The domain counts CPU in integer millicores and memory in integer MiB. The
MCP boundary speaks the original resource manager's units: `cpu` as float
cores and `memory` as MB (the same integers the domain holds as MiB). Times
go out as ISO 8601 with an explicit UTC offset.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
)

from allocation_ledger.domain.pool_settings import (
    MAX_CPU_MILLICORES,
    MAX_MEMORY_MIB,
    MAX_WORKERS_CAPACITY,
)
from allocation_ledger.domain.values import MILLICORES_PER_CORE, Resources

MAX_CPU_CORES = MAX_CPU_MILLICORES // MILLICORES_PER_CORE
MAX_LOG_POSITION = 2**63 - 1
"""The largest position (or sequence) a log can give: a signed 64-bit
integer, as SQLite and PostgreSQL store it."""


def cores(millicores: int) -> float:
    """Millicores as float cores (exact to the nearest double)."""
    return millicores / MILLICORES_PER_CORE


def millicores(cpu: float) -> int:
    """Float cores as millicores; refuses values finer than a millicore."""
    try:
        exact = Decimal(repr(cpu)) * MILLICORES_PER_CORE
    except InvalidOperation:
        msg = f"cpu must be a finite number of cores, got {cpu!r}"
        raise ValueError(msg) from None
    if exact != exact.to_integral_value():
        msg = (
            f"cpu {cpu!r} is finer than a millicore; give cores with at most "
            "3 decimal places (e.g. 0.5 or 2.125)"
        )
        raise ValueError(msg)
    return int(exact)


def whole_millicores(cpu: float) -> float:
    """`cpu` itself, if it is a whole number of millicores (else ValueError)."""
    millicores(cpu)
    return cpu


def iso(moment: datetime) -> str:
    """A time as ISO 8601 in UTC, with its +00:00 offset."""
    return moment.astimezone(UTC).isoformat()


UtcTime = Annotated[datetime, PlainSerializer(iso, return_type=str)]
"""A time, written as ISO 8601 with an explicit +00:00 offset."""


def representable(moment: datetime) -> datetime:
    """`moment` itself, if it can be told in UTC: one near the ends of the
    calendar (9999-12-31T23:00:00-12:00) lies outside it there, and every
    answer speaks UTC. Raises ValueError."""
    try:
        utc(moment).astimezone(UTC)
    except OverflowError:
        msg = (
            "must be a time between 0001-01-01 and 9999-12-31 in UTC, got "
            f"{moment.isoformat()}"
        )
        raise ValueError(msg) from None
    return moment


def iso_text(value: object) -> object:
    """`value` itself unless it is a number: JSON has no time type, so a
    time comes as ISO 8601 text; a number would be read as seconds since
    1970, which nothing here promises. Raises ValueError."""
    if isinstance(value, int | float):
        msg = (
            "must be an ISO 8601 time such as 2026-11-26T09:00:00Z, got "
            f"{json.dumps(value)}"
        )
        raise ValueError(msg)
    return value


Moment = Annotated[datetime, BeforeValidator(iso_text), AfterValidator(representable)]
"""A time argument (ISO 8601 text) that can be told in UTC."""


def utc(moment: datetime) -> datetime:
    """A time as given, or taken as UTC when it has no offset."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Amounts(BaseModel):
    """Resources in client units."""

    cpu: float = Field(description="CPU in cores.")
    memory: int = Field(description="Memory in MB.")
    workers: int = Field(description="Worker slots.")


def amounts(resources: Resources) -> Amounts:
    """Domain resources (millicores, MiB) in client units (cores, MB)."""
    return Amounts(
        cpu=cores(resources.cpu_millicores),
        memory=resources.memory_mib,
        workers=resources.workers,
    )


def with_amounts(
    base: Resources, *, cpu: float | None, memory: int | None, workers: int | None
) -> Resources:
    """`base` with each amount given (client units) in place of its own."""
    return Resources(
        base.cpu_millicores if cpu is None else millicores(cpu),
        base.memory_mib if memory is None else memory,
        base.workers if workers is None else workers,
    )


# A pool's total or a tenant's limit, as set_capacity and set_quota take them;
# None keeps the current one. Each argument adds its own description.
CoresSetting = Annotated[
    float | None,
    Field(strict=True, ge=0, le=MAX_CPU_CORES, allow_inf_nan=False),
    AfterValidator(lambda v: None if v is None else whole_millicores(v)),
]
MemorySetting = Annotated[int | None, Field(strict=True, ge=0, le=MAX_MEMORY_MIB)]
WorkersSetting = Annotated[
    int | None, Field(strict=True, ge=0, le=MAX_WORKERS_CAPACITY)
]
