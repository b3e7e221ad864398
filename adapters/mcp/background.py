"""What a running server does on its own: at start, the reconciliation of MCP
server processes with the ledger (process provisioner only); then the expiry
sweeper (which also finishes work an interruption left half done), the
idle-MCP-server stopper and the change feed (change_feed.py).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread

from allocation_ledger.adapters.mcp.change_feed import ChangeFeed
from allocation_ledger.adapters.metrics.instruments import LedgerMetrics
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    resume_interrupted,
)

logger = logging.getLogger("allocation_ledger.mcp")


async def _periodically(
    name: str,
    interval: float,
    job: Callable[[], Awaitable[None]],
    ran: Callable[[bool], None],
) -> None:
    """Run `job` now and then every `interval` seconds; errors are logged, not
    fatal. `ran` is told of each run: True if it succeeded."""
    while True:
        try:
            await job()
        except Exception:  # - logged and retried on the next round
            logger.exception("%s failed; trying again in %g s", name, interval)
            ran(False)
        else:
            ran(True)
        await anyio.sleep(interval)


class BackgroundWork:
    """The expiry sweeper and the idle-MCP-server stopper of one running
    server; each run, and what it expired or stopped, is counted in
    `metrics`."""

    def __init__(
        self,
        service: AllocationService,
        metrics: LedgerMetrics,
        changes: ChangeFeed | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.changes = changes

    async def sweep(self) -> None:
        """Finish interrupted work, then expire every lease that has run out."""
        resumed = await anyio.to_thread.run_sync(resume_interrupted, self.service)
        if resumed:
            logger.warning(
                "finished %d allocation(s) left half done by an interruption: %s",
                len(resumed),
                ", ".join(resumed),
            )
        result = await anyio.to_thread.run_sync(self.service.ledger.expire_due)
        self.metrics.expired.labels("sweeper").inc(len(result.expired))
        if result.expired:
            logger.info(
                "expired %d allocation(s): %s",
                len(result.expired),
                ", ".join(result.expired),
            )
        for error in result.deprovision_errors:
            logger.warning("teardown after expiry failed: %s", error)
        if resumed or result.expired:
            self._nudge()

    def _nudge(self) -> None:
        if self.changes is not None:
            self.changes.nudge()

    async def stop_idle(self) -> None:
        """Stop the MCP servers idle longer than their pool's idle timeout."""
        result = await anyio.to_thread.run_sync(self.service.ledger.stop_idle_servers)
        self.metrics.idle_stopped.inc(len(result.stopped))
        for server in result.stopped:
            logger.info(
                "stopped idle MCP server %s on port %d (pool %s)",
                server.name,
                server.port,
                server.pool,
            )
        for error in result.errors:
            logger.warning("stopping an idle MCP server failed: %s", error)
        if result.stopped:
            self._nudge()

    async def reconcile(self) -> None:
        """Make this machine's MCP server processes what the ledger records
        (process provisioner only; see ProcessProvisioner.reconcile)."""
        provisioner = self.service.ledger.provisioner
        if not isinstance(provisioner, ProcessProvisioner):
            return
        lines = await anyio.to_thread.run_sync(provisioner.reconcile)
        for line in lines:
            logger.info("reconciled: %s", line)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[BackgroundWork]:
        """Reconcile server processes first (before any request is served),
        then, while the context is open, sweep and stop idle servers
        periodically and follow the ledger's changes (if given a feed)."""
        settings = self.service.settings
        await self.reconcile()
        async with anyio.create_task_group() as group:
            if self.changes is not None:
                await self.changes.start()
                group.start_soon(self.changes.run)
            group.start_soon(
                _periodically,
                "expiry sweep",
                settings.sweep_interval_seconds,
                self.sweep,
                functools.partial(self.metrics.background_run, "expiry_sweep"),
            )
            group.start_soon(
                _periodically,
                "idle MCP server check",
                settings.idle_check_interval_seconds,
                self.stop_idle,
                functools.partial(self.metrics.background_run, "idle_stop"),
            )
            try:
                yield self
            finally:
                group.cancel_scope.cancel()
