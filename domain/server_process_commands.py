"""The Ledger's commands about MCP server processes, as the provisioner sees them.

`record_server_process` saves what the provisioner saw happen to a process
(a ServerProcess event); `stop_unstartable_server` corrects the pool's record
of a server whose process cannot be started and that nobody uses, so that its
port is free again. Both are called by the provisioner from its own threads,
never inside another unit of work (a provisioner that runs processes is not
instant: the ledger calls it between units of work).
"""

from __future__ import annotations

import copy

from allocation_ledger.domain.actors import PROVISIONER_ACTOR
from allocation_ledger.domain.pool_state import ServerInstance
from allocation_ledger.domain.provisioning import Provisioning
from allocation_ledger.domain.results import StoppedServer
from allocation_ledger.domain.server_process import (
    ProcessReport,
    ServerProcess,
    server_process_uuid,
)
from allocation_ledger.domain.unit_of_work import UnitOfWork


class ServerProcessCommands(Provisioning):
    """MCP server processes: their history and corrections (a mixin of
    `ledger.Ledger`)."""

    def record_server_process(
        self, report: ProcessReport, *, actor: str = PROVISIONER_ACTOR
    ) -> int | None:
        """Save what the report says happened to a server process, at the
        ledger clock's time; answers the notification position written.

        Safe from any thread. The first report about a (pool, name) also
        records the aggregate's `Registered` event.
        """

        def body(work: UnitOfWork) -> int | None:
            now = self.clock.now()
            pool, name = report.pool, report.name
            found = work.get(server_process_uuid(pool, name))
            if found is None:
                new = ServerProcess.register(pool, name, at=now, actor=actor)
                found = work.add(new)
            assert isinstance(found, ServerProcess)
            found.record(report, at=now, actor=actor)
            return work.save()

        return self._run("record_server_process", body)

    def stop_unstartable_server(
        self, pool: str, name: str, port: int, *, actor: str = PROVISIONER_ACTOR
    ) -> bool:
        """Record the MCP server `name` stopped in `pool` (ServerStopped, its
        port free again) when the pool still records it on `port` and no live
        allocation uses it. Answers whether it was recorded stopped; one in
        use stays recorded (its failure is in its ServerProcess history).

        Raises PoolNotFoundError for an unknown pool.
        """

        def body(work: UnitOfWork) -> bool:
            target = work.pool(pool)
            server = target.servers.get(name)
            stopped = None
            if server is not None and server.port == port:
                stopped = target.stop_unused_server(
                    name, at=self.clock.now(), actor=actor, reason="unstartable"
                )
            if stopped is None:
                work.require_current()
                return False
            work.stopped.append(StoppedServer(pool, name, port))
            work.save()
            return True

        return self._run("stop_unstartable_server", body)

    def recorded_servers(self) -> dict[tuple[str, str], ServerInstance]:
        """Every MCP server the pools record as running or idle, by (pool,
        name), as stored now (fresh reads)."""
        recorded: dict[tuple[str, str], ServerInstance] = {}
        for name in self.pool_names():
            for server in self.pool(name).servers.values():
                recorded[(name, server.name)] = server
        return recorded

    def server_process(self, pool: str, name: str) -> ServerProcess | None:
        """The ServerProcess of (pool, name) as stored (a fresh read); None
        when nothing was ever reported about it."""

        def body(work: UnitOfWork) -> ServerProcess | None:
            found = work.get(server_process_uuid(pool, name), fresh=True)
            assert found is None or isinstance(found, ServerProcess)
            return copy.deepcopy(found)

        return self._run("server_process", body)
