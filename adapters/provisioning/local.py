"""The endpoints-only provisioner: addresses handed out at once, nothing run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from allocation_ledger.domain.provisioner import Endpoints, ServerSlot, WorkerSlot


def url_host(host: str) -> str:
    """`host` as it goes in a URL: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


class LocalProvisioner:
    """Hands out `http://<host>:<port>` endpoints for the ports the pool assigned.

    `host`: the host name in the endpoints of any pool not in `hosts`;
    `hosts`: the host per pool name (the catalog's `advertise_host`). It
    only works out endpoints (`instant`; `instant_endpoints` always answers
    them), so the ledger reserves and activates in one transaction, and
    releases in one; it starts and stops nothing (the `endpoints`
    provisioner, for sites where something else runs the servers).
    """

    instant = True

    def __init__(
        self, host: str = "localhost", hosts: Mapping[str, str] | None = None
    ) -> None:
        self.host = host
        self.hosts = dict(hosts or {})

    def provision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints:
        """The endpoints of the allocation's workers and servers (no I/O)."""
        return Endpoints(
            workers={w.worker_id: self._endpoint(pool, w.port) for w in workers},
            servers={s.name: self._endpoint(pool, s.port) for s in servers},
        )

    def instant_endpoints(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> Endpoints | None:
        """Always the endpoints (`provision`): it has nothing to do outside, so
        the ledger reserves and activates every request in one transaction."""
        return self.provision(allocation_id, workers, servers, pool=pool)

    def deprovision(
        self,
        allocation_id: str,
        workers: Sequence[WorkerSlot],
        servers: Sequence[ServerSlot],
        *,
        pool: str,
    ) -> None:
        """Nothing to tear down."""
        return None

    def stop_server(self, name: str, port: int, *, pool: str) -> None:
        """Nothing to stop."""
        return None

    def host_of(self, pool: str) -> str:
        """The host name the pool's endpoints carry."""
        return self.hosts.get(pool, self.host)

    def _endpoint(self, pool: str, port: int) -> str:
        return f"http://{url_host(self.host_of(pool))}:{port}"
