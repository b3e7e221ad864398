"""The default provisioner: endpoints on localhost, handed out at once."""

from __future__ import annotations

from collections.abc import Sequence

from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot


class LocalProvisioner:
    """Hands out `http://<host>:<port>` endpoints for the ports the pool assigned.

    It only works out endpoints (`instant`), so the ledger reserves and
    activates in one transaction.
    """

    instant = True

    def __init__(self, host: str = "localhost") -> None:
        self.host = host

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
    ) -> Endpoints:
        return Endpoints(
            workers={w.worker_id: self._endpoint(w.port) for w in workers},
            servers={s.name: self._endpoint(s.port) for s in servers},
        )

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
    ) -> None:
        return None

    def stop_server(self, name: str, port: int) -> None:
        return None

    def _endpoint(self, port: int) -> str:
        return f"http://{self.host}:{port}"
