"""What the Ledger's commands answer.

Every answer carries `position`: the notification position of the last event
the command wrote (None when it wrote nothing), which a query catches up to
before it reads, so that it sees the command's own writes. Allocations and
pools in answers are copies, safe to read at leisure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.allocation_decisions import ReleaseResult
from allocation_ledger.domain.pool import Pool


@dataclass(frozen=True)
class RequestResult:
    """What a request came to. `allocation` is a copy, safe to read at leisure.

    `replayed`: an earlier request with the same request id, answered again;
    `dry_run`: nothing was written; `expired_first`: allocations whose lease
    had run out, expired first to make room.
    """

    allocation: Allocation
    position: int | None
    replayed: bool = False
    dry_run: bool = False
    expired_first: tuple[str, ...] = ()
    preempted: tuple[str, ...] = ()
    """Allocations whose capacity this request took (would take, on a dry run)."""
    tenants: Mapping[str, str | None] = field(default_factory=dict)
    """The tenant of each allocation in `expired_first` and `preempted`."""


@dataclass(frozen=True)
class ReleaseOutcome:
    """What a release (or the cancel of a queued request) did, and to what."""

    result: ReleaseResult
    allocation: Allocation
    position: int | None


@dataclass(frozen=True)
class RenewOutcome:
    """The allocation after a renewal (or an expiry)."""

    allocation: Allocation
    position: int | None


@dataclass(frozen=True)
class SweepResult:
    """Allocations expired by a sweep, in the order they expired."""

    expired: tuple[str, ...]
    position: int | None
    deprovision_errors: tuple[str, ...] = ()
    tenants: tuple[str | None, ...] = ()
    """The tenant of each allocation in `expired`, in the same order."""


@dataclass(frozen=True)
class StoppedServer:
    """An MCP server a pool stopped: its process is stopped after commit."""

    pool: str
    name: str
    port: int


@dataclass(frozen=True)
class IdleStopResult:
    """MCP servers stopped for being idle past their pool's idle timeout."""

    stopped: tuple[StoppedServer, ...]
    position: int | None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolResult:
    """A pool after a configuration command; `created` if the command made it."""

    pool: Pool
    position: int | None
    created: bool
