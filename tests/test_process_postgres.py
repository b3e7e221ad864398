"""Two ledger servers with the process provisioner on one PostgreSQL ledger,
as real `allocation-ledger serve` processes with the same catalog: only one
of them ever serves it (a PostgreSQL advisory lock of the ledger's database
and schema), so no two servers ever start a process for the same MCP server
of the same pool. The other stops at start naming the one that serves; a
server with the endpoints provisioner cannot join it either; once the first
is gone, the second serves, and adopts the processes the first left running
in the data directory they share. Every process a test starts is killed
when it ends (tests/process_support.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from allocation_ledger.adapters.provisioning.local import LocalProvisioner
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.adapters.storage.service import init_database, open_service
from allocation_ledger.domain.server_process import server_process_uuid
from tests.mcp_support import call, free_port, http_client
from tests.postgres import DBNAME, HOST, PORT, USER, postgres_schema, postgres_settings
from tests.process_support import (
    MARK,
    POOL,
    TEST_SERVER,
    catalog_toml,
    is_alive,
    kinds,
    marked_processes,
    marking,
    wait_until,
)

pytestmark = pytest.mark.anyio
__all__ = ["postgres_schema"]

WORKER = [
    sys.executable,
    str(Path(__file__).with_name("worker_program.py")),
    "--port",
    "{port}",
    "--worker-id",
    "{worker_id}",
    "--allocation-id",
    "{allocation_id}",
]
BRIDGE = "allocation_ledger.adapters.provisioning.bridge"


@pytest.fixture
def mark(tmp_path: Path) -> Iterator[str]:
    yield from marking(tmp_path)


class Server:
    """One `serve --transport http` process on the test's PostgreSQL ledger."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "allocation_ledger.adapters.cli",
                    "serve",
                    "--transport",
                    "http",
                    "--no-auth",
                    "--port",
                    str(self.port),
                ],
                env=env,
                cwd=log.parent,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def outcome(self, timeout: float = 60) -> str:
        """ "serving" once it answers, or "exited" once it stopped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return "exited"
            try:
                if httpx2.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return "serving"
            except httpx2.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the server neither served nor exited: {self.errors}")

    @property
    def errors(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def bridges(mark: str) -> list[int]:
    """The marked bridge processes (one per running MCP server)."""
    found = []
    for pid in marked_processes(mark):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if BRIDGE.encode() in argv:
            found.append(pid)
    return found


async def test_only_one_process_server_ever_serves_a_postgres_ledger(
    postgres_schema: str, tmp_path: Path, mark: str
) -> None:
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    config = tmp_path / "ledger.toml"
    servers = {"echo": {"command": TEST_SERVER}}
    config.write_text(catalog_toml(mark, servers, pool={"worker_command": WORKER}))
    base = {
        **{k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ},
        "ALLOCATION_LEDGER_STORE": "postgres",
        "ALLOCATION_LEDGER_POSTGRES_HOST": HOST,
        "ALLOCATION_LEDGER_POSTGRES_PORT": str(PORT),
        "ALLOCATION_LEDGER_POSTGRES_USER": USER,
        "ALLOCATION_LEDGER_POSTGRES_DBNAME": DBNAME,
        "ALLOCATION_LEDGER_POSTGRES_SCHEMA": postgres_schema,
        "ALLOCATION_LEDGER_CONFIG": str(config),
        "ALLOCATION_LEDGER_LOG_LEVEL": "WARNING",
        MARK: mark,  # the workers inherit it
    }

    def env(data: str, **more: str) -> dict[str, str]:
        return base | {"ALLOCATION_LEDGER_DATA_DIRECTORY": str(tmp_path / data)} | more

    # Two servers with the same catalog, started at once: one serves.
    started = [
        Server(env("data-a"), tmp_path / "a.log"),
        Server(env("data-b"), tmp_path / "b.log"),
    ]
    running: list[Server] = []
    try:
        outcomes = [server.outcome() for server in started]
        assert sorted(outcomes) == ["exited", "serving"], [s.errors for s in started]
        winner = started[outcomes.index("serving")]
        loser = started[outcomes.index("exited")]
        running.append(winner)
        assert loser.process.returncode == 1  # not a usage error
        assert "another ledger server serves this ledger" in loser.errors
        assert f"pid {winner.process.pid} on " in loser.errors  # names the holder

        async with http_client(winner.url + "/mcp") as client:
            for job in ("a", "b"):
                made = await call(
                    client,
                    "request_resources",
                    job_id=job,
                    mcp_servers=["echo"],
                    workers=1,
                    pool=POOL,
                )
                assert made["status"] == "active", made
        [bridge] = bridges(mark)

        # Neither a second process server, nor one with the endpoints
        # provisioner, can join it while it serves.
        for data, first_line in (
            ("data-c", ""),
            ("data-d", 'provisioner = "endpoints"'),
        ):
            path = tmp_path / f"{data}.toml"
            path.write_text(first_line + "\n" + config.read_text())
            late_env = env(data, ALLOCATION_LEDGER_CONFIG=str(path))
            late = Server(late_env, tmp_path / f"{data}.log")
            assert late.outcome() == "exited", late.errors
            assert late.process.returncode == 1
            assert f"pid {winner.process.pid} on " in late.errors
        assert bridges(mark) == [bridge]  # none started twice

        # The first server stops (its processes keep running, for the next
        # server on its data directory to adopt); then the second serves.
        winner.stop()
        running.remove(winner)
        assert is_alive(bridge)
        data = "data-a" if winner is started[0] else "data-b"
        after = Server(env(data), tmp_path / "after.log")
        running.append(after)
        assert after.outcome() == "serving", after.errors
        async with http_client(after.url + "/mcp") as client:
            status = await call(client, "get_mcp_status", name="echo", pool=POOL)
            assert status["status"] == "running" and status["pid"] == bridge
            made = await call(
                client, "request_resources", job_id="c", mcp_servers=["echo"], pool=POOL
            )
            assert made["status"] == "active"
        assert wait_until(lambda: bridges(mark) == [bridge], 5)
    finally:
        for server in running:
            server.stop()

    service = open_service(settings, provisioner=LocalProvisioner())
    try:
        store = service.ledger.repository.event_store
        history = kinds(list(store.get(server_process_uuid(POOL, "echo"))))
        assert history.count("Started") == 1, history  # one process, ever
        assert history[-1] == "Adopted"
        assert verify(service).clean
    finally:
        service.close()
