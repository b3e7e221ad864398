"""Units at the MCP boundary, and what converts them.

The domain counts CPU in integer millicores and memory in integer MiB. The
MCP boundary speaks the original resource manager's units: `cpu` as float
cores and `memory` as MB (the same integers the domain holds as MiB). Times
go out as ISO 8601 with an explicit UTC offset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BaseModel, Field, PlainSerializer

from allocation_ledger.domain.ledger import MAX_CPU_MILLICORES
from allocation_ledger.domain.values import MILLICORES_PER_CORE, Resources

MAX_CPU_CORES = MAX_CPU_MILLICORES // MILLICORES_PER_CORE


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
    millicores(cpu)
    return cpu


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()


UtcTime = Annotated[datetime, PlainSerializer(iso, return_type=str)]
"""A time, written as ISO 8601 with an explicit +00:00 offset."""


def utc(moment: datetime) -> datetime:
    """A time as given, or taken as UTC when it has no offset."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def omit_if_none(value: object) -> bool:
    return value is None


class Amounts(BaseModel):
    """Resources in client units."""

    cpu: float = Field(description="CPU in cores.")
    memory: int = Field(description="Memory in MB.")
    workers: int = Field(description="Worker slots.")


def amounts(resources: Resources) -> Amounts:
    return Amounts(
        cpu=cores(resources.cpu_millicores),
        memory=resources.memory_mib,
        workers=resources.workers,
    )
