"""What every group of MCP tools has: the service, the access policy, and the
plumbing between a tool call and the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from typing import TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.http.auth import Access, Caller
from allocation_ledger.adapters.mcp.tools.outcomes import Settle, failure_message
from allocation_ledger.adapters.mcp.tools.specs import TOOLS
from allocation_ledger.adapters.storage.caught_up_reads import NotCaughtUp
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.adapters.storage.store_errors import (
    is_store_error,
    store_cause,
    write_may_be_committed,
)
from allocation_ledger.adapters.storage.write_journal import CommandWrites
from allocation_ledger.domain.allocation_ids import allocation_uuid
from allocation_ledger.domain.errors import (
    LedgerBusyError,
    LedgerError,
    PoolNotFoundError,
)
from allocation_ledger.domain.pool_settings import DEFAULT_WORKER_SIZE
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.domain.values import Resources
from allocation_ledger.projections.queries import ReadModels
from allocation_ledger.projections.views import CapacityView

T = TypeVar("T")

_AT_ONCE: ContextVar[ReadModels | None] = ContextVar("at_once_reads", default=None)
"""The read models of a query run at once on the event loop (`_call`)."""

logger = logging.getLogger("allocation_ledger.mcp")

_QUERY = Settle(
    check=lambda _: "Calling it again is safe.",
    finish=lambda _: "Calling it again is safe.",
)


class ToolGroup:
    """What every group of tools shares: one service, one access policy, and
    the steps each tool takes (run ledger work off the event loop, check the
    caller's scope, read a pool's capacity)."""

    def __init__(self, service: AllocationService, access: Access) -> None:
        self.service = service
        self.ledger = service.ledger
        self.access = access

    @property
    def read(self) -> ReadModels:
        """The read models a query reads: the service's, which catch up
        first; inside `_call(..., at_once=True)`, those that never wait."""
        return _AT_ONCE.get() or self.service.read_models

    async def _call(
        self, work: Callable[[], T], *, settle: Settle = _QUERY, at_once: bool = False
    ) -> T:
        """Run ledger work off the event loop, noting what it writes.

        Domain errors become ToolErrors with their own text; failures of the
        database become ToolErrors naming the cause. Either says what the
        work had written, if anything, and how to settle a write in doubt
        (`settle`, for commands; outcomes.py).

        `at_once`: a query that only reads the read models (and what is in
        memory) is first tried right here, on the event loop, against read
        models that never catch up and never wait (caught_up_reads.py): a
        thread hop costs more than such a read. When those lag behind the
        log or the database would make it wait, it runs off the event loop
        as any other work, so the answer and its errors are the same.
        """
        reads = self.service.caught_up_reads
        if at_once and reads is not None:
            token = _AT_ONCE.set(reads)
            try:
                return self._read_at_once(work)
            except NotCaughtUp:
                pass
            finally:
                _AT_ONCE.reset(token)
        return await anyio.to_thread.run_sync(self._recorded, work, settle)

    @staticmethod
    def _read_at_once(work: Callable[[], T]) -> T:
        """A query's work, which writes nothing: its domain errors become
        ToolErrors as in `_recorded`; a failure of the database is
        NotCaughtUp (the query is asked again off the event loop, where
        such failures are told as usual)."""
        try:
            return work()
        except LedgerError as error:
            raise ToolError(str(error)) from error
        except NotCaughtUp:
            raise
        except Exception as error:
            if is_store_error(error):
                raise NotCaughtUp(str(error)) from error
            raise

    def _recorded(self, work: Callable[[], T], settle: Settle) -> T:
        with self.service.writes.recording() as writes:
            try:
                return work()
            except LedgerBusyError as error:
                # It waited for other commands, which wait for the store: why?
                problem = self.service.probe.check().problem
                cause = str(error) if problem is None else f"{problem} ({error})"
                raise ToolError(self._failure(cause, writes, settle)) from error
            except LedgerError as error:
                if writes.committed:
                    raise ToolError(
                        self._failure(str(error), writes, settle)
                    ) from error
                raise ToolError(str(error)) from error
            except Exception as error:
                if not is_store_error(error):
                    raise
                cause = store_cause(error, self.service.probe)
                logger.warning(
                    "a command failed on the database: %s (%s)", cause, error
                )
                raise ToolError(self._failure(cause, writes, settle)) from error

    @staticmethod
    def _failure(cause: str, writes: CommandWrites, settle: Settle) -> str:
        failed = writes.failed
        return failure_message(
            cause,
            writes,
            may_be_committed=(
                failed is not None
                and failed.error is not None
                and write_may_be_committed(failed.error)
            ),
            settle=settle,
        )

    def _writes(self) -> CommandWrites | None:
        """What the command running in this thread has written so far."""
        return self.service.writes.current()

    def _actor(self, tool: str) -> str:
        return self.access.actor(TOOLS[tool].scope, tool)

    def _caller(self, tool: str) -> Caller:
        return self.access.caller(TOOLS[tool].scope, tool)

    @staticmethod
    def _named_tenant(caller: Caller, tool: str, tenant: str) -> str:
        """A tenant a call names: the caller's own, or any with the admin
        scope (or no token); ToolError otherwise."""
        if tenant == caller.tenant or caller.sees_every_tenant:
            return tenant
        msg = (
            f"{tool} for tenant {tenant!r} needs the 'admin' scope; the token of "
            f"{caller.actor!r} acts for tenant {caller.tenant!r} only"
        )
        raise ToolError(msg)

    def _tenant_filter(
        self, caller: Caller, tool: str, tenant: str | None
    ) -> str | None:
        """The tenant a query is confined to: the one named (see
        `_named_tenant`), else all the caller sees (None: every tenant)."""
        if tenant is None:
            return caller.visibility.tenant
        return self._named_tenant(caller, tool, tenant)

    def _visible_ids(self, ids: Iterable[str], visibility: Visibility) -> set[str]:
        """Which of these allocations `visibility` includes, by their rows in
        the read models (read as they are: call after catching up)."""
        wanted = set(ids)
        if visibility.tenant is None or not wanted:
            return wanted
        rows = self.read.store.allocations([allocation_uuid(i) for i in wanted])
        return {
            view.allocation_id
            for view in rows.values()
            if visibility.includes(view.tenant)
        }

    def _capacity_view(self, pool: str, *, caught_up: bool = False) -> CapacityView:
        """A pool's capacity; `caught_up` skips catching up (just done)."""
        view = self.read.store.get_capacity(pool) if caught_up else None
        if view is None:
            view = self.read.capacity(pool)
        if view is None:
            raise PoolNotFoundError(pool)
        return view

    def _worker_size(self, pool: str, *, caught_up: bool = False) -> Resources:
        try:
            return self._capacity_view(pool, caught_up=caught_up).worker_size
        except PoolNotFoundError:
            return DEFAULT_WORKER_SIZE
