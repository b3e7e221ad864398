"""Domain exceptions. Each carries the facts in fields; the edge words them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


class LedgerError(Exception):
    """Base of every error the ledger raises on purpose."""


class InvalidRequestError(LedgerError):
    """An argument is malformed or out of range; nothing was written."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class AllocationNotFoundError(LedgerError):
    def __init__(self, allocation_id: str) -> None:
        super().__init__(f"allocation {allocation_id!r} not found")
        self.allocation_id = allocation_id


class PoolNotFoundError(LedgerError):
    """No pool of that name; with `at`, none existed yet at that moment."""

    def __init__(self, pool: str, at: datetime | None = None) -> None:
        if at is None:
            super().__init__(
                f"pool {pool!r} not found: a pool is declared as [pools.NAME] "
                "in the catalog file (docs/provisioning.md)"
            )
        else:
            super().__init__(f"pool {pool!r} did not exist at {at.isoformat()}")
        self.pool = pool
        self.at = at


class ServerHistoryNotFoundError(LedgerError):
    """No process of MCP server `server` ever ran in `pool`: there is no
    history to show. `known`: the servers the pool does know, sorted."""

    def __init__(self, pool: str, server: str, known: tuple[str, ...]) -> None:
        listed = ", ".join(known) if known else "none yet"
        super().__init__(
            f"no process of MCP server {server!r} has run in pool {pool!r}, so "
            f"it has no history (servers that pool knows: {listed})"
        )
        self.pool = pool
        self.server = server
        self.known = known


class PoolExistsError(LedgerError):
    def __init__(self, pool: str) -> None:
        super().__init__(f"pool {pool!r} already exists")
        self.pool = pool


class AllocationNotLiveError(LedgerError):
    """The allocation is in a terminal state and cannot change."""

    def __init__(self, allocation_id: str, state: str, action: str) -> None:
        super().__init__(f"cannot {action} allocation {allocation_id!r}: it is {state}")
        self.allocation_id = allocation_id
        self.state = state
        self.action = action


class AllocationStateError(LedgerError):
    """The allocation is live but not in a state that allows the action."""

    def __init__(self, allocation_id: str, state: str, action: str) -> None:
        super().__init__(
            f"cannot {action} allocation {allocation_id!r} while it is {state}"
        )
        self.allocation_id = allocation_id
        self.state = state
        self.action = action


@dataclass(frozen=True)
class ArgumentChange:
    """One argument a retry gave otherwise than the request it retries:
    its name (the domain's: `servers` for MCP's `mcp_servers`) and both
    values, as the ledger holds them (`original` from the recorded request)."""

    argument: str
    original: Any
    retried: Any


class RequestIdConflictError(LedgerError):
    """A request_id was reused with different arguments: not a retry.

    `changes`: each argument that differs, with both values, in the order
    job_id, servers, workers, priority, ttl_seconds, metadata, tenant, wait,
    max_wait_seconds, preempt, dry_run; `differing`: their names. Nothing
    was written.
    """

    def __init__(
        self, request_id: str, allocation_id: str, changes: list[ArgumentChange]
    ) -> None:
        described = "; ".join(
            f"{c.argument} was {c.original!r}, now {c.retried!r}" for c in changes
        )
        super().__init__(
            f"request_id {request_id!r} was already used for allocation "
            f"{allocation_id} with other arguments ({described}); a retry must "
            "repeat them, and a different request needs a new request_id"
        )
        self.request_id = request_id
        self.allocation_id = allocation_id
        self.changes = changes
        self.differing = [c.argument for c in changes]


IdempotencyConflictError = RequestIdConflictError
"""The former name of RequestIdConflictError."""


class ConcurrentUpdateError(LedgerError):
    """A command kept losing to concurrent writers; it wrote nothing. Retry it."""

    def __init__(self, command: str, attempts: int) -> None:
        super().__init__(
            f"{command} lost to concurrent updates {attempts} times and wrote "
            "nothing; it is safe to retry"
        )
        self.command = command
        self.attempts = attempts


class ProvisioningError(LedgerError):
    """A provisioner could not set up or tear down an allocation's resources."""

    def __init__(self, allocation_id: str, reason: str) -> None:
        super().__init__(f"provisioning of {allocation_id} failed: {reason}")
        self.allocation_id = allocation_id
        self.reason = reason


class LeaseNotDueError(LedgerError):
    """Only an allocation whose lease has run out can be expired."""

    def __init__(self, allocation_id: str, expires_at: object) -> None:
        super().__init__(
            f"allocation {allocation_id!r} does not expire until {expires_at}"
        )
        self.allocation_id = allocation_id
        self.expires_at = expires_at


class LedgerBusyError(LedgerError):
    """A command waited its longest for the ledger, which other commands of
    this process held (each waiting for the store, as a rule), or, with
    `elsewhere`, another server on the same PostgreSQL ledger held (its
    writers' lock); this command wrote nothing itself. `waited_seconds`: how
    long it waited."""

    def __init__(
        self, command: str, waited_seconds: float, *, elsewhere: bool = False
    ) -> None:
        holder = (
            "another ledger server on this database, which held the writers' "
            "lock (docs/deployment.md, 'Several servers')"
            if elsewhere
            else "this server's other commands, which held the ledger (waiting "
            "for its database)"
        )
        super().__init__(f"{command} waited {waited_seconds:g} s for {holder}")
        self.command = command
        self.elsewhere = elsewhere
        self.waited_seconds = waited_seconds
