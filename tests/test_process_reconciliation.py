"""The ledger (`allocation-ledger serve` over stdio, a real subprocess) killed
with SIGKILL and started again on the same database and data directory: the
MCP server it ran is adopted (same process, none started twice), a process
an earlier run left for a server the ledger no longer records is stopped,
and both are in the ledger's history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread
import pytest
from mcp import Client

from allocation_ledger.adapters.provisioning.processes import ServerProcesses
from allocation_ledger.adapters.provisioning.server_spec import ServerSpec
from allocation_ledger.adapters.storage.audit import verify
from allocation_ledger.domain.worker_process import worker_process_uuid
from tests.mcp_support import call, server_env, sqlite_service, stdio_params, text_of
from tests.process_support import (
    MARK,
    POOL,
    POOL_MCP_FIRST,
    TEST_SERVER,
    catalog_toml,
    is_alive,
    kinds,
    marked_processes,
    marking,
    process_events,
    refuses_connections,
    wait_until,
)

pytestmark = pytest.mark.anyio

BRIDGE = "allocation_ledger.adapters.provisioning.bridge"


@pytest.fixture
def mark(tmp_path: Path) -> Iterator[str]:
    """This test's mark; its marked processes are killed when it ends."""
    yield from marking(tmp_path)


class RawClient:
    """Just enough JSON-RPC over a served ledger's stdin and stdout."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.stdin: IO[str] = process.stdin
        self.stdout: IO[str] = process.stdout
        self.next_id = 0
        self.send(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"},
            },
        )
        self.stdin.write(
            json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}) + "\n"
        )
        self.stdin.flush()

    def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        self.stdin.write(json.dumps(message | {"params": params}) + "\n")
        self.stdin.flush()
        while True:
            reply = json.loads(self.stdout.readline())
            if reply.get("id") == self.next_id:
                assert "error" not in reply, reply
                result: dict[str, Any] = reply["result"]
                return result

    def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        result = self.send("tools/call", {"name": tool, "arguments": arguments})
        assert not result.get("isError"), result
        structured: dict[str, Any] = result["structuredContent"]
        return structured


def leave_orphan(data: Path, mark: str) -> int | None:
    """Run the server "orphan" from the data directory and leave it running,
    as a run of the ledger that recorded it stopped and then died would."""
    spec = ServerSpec("orphan", TEST_SERVER, env={MARK: mark})
    with ServerProcesses(data) as earlier:
        return earlier.ensure_running(POOL, spec, POOL_MCP_FIRST + 50).pid


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


async def test_a_killed_ledger_started_again_adopts_its_servers_and_stops_orphans(
    tmp_path: Path, mark: str
) -> None:
    database = tmp_path / "ledger.db"
    data = tmp_path / "data"
    config = tmp_path / "ledger.toml"
    config.write_text(catalog_toml(mark, {"echo": {"command": TEST_SERVER}}))
    env = {
        "ALLOCATION_LEDGER_CONFIG": str(config),
        "ALLOCATION_LEDGER_DATA_DIRECTORY": str(data),
    }
    with open(tmp_path / "ledger.log", "w") as log:
        ledger = subprocess.Popen(
            [sys.executable, "-m", "allocation_ledger.adapters.cli", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=server_env(database, **env),
            cwd=tmp_path,
        )
    try:
        client = RawClient(ledger)
        granted = client.call(
            "request_resources", job_id="a", mcp_servers=["echo"], pool=POOL
        )
        assert granted["status"] == "active"
        [server] = client.call(
            "get_allocation", allocation_id=granted["allocation_id"]
        )["mcp_servers"]
        pid = server["pid"]
    finally:
        ledger.kill()  # SIGKILL: no shutdown, no cleanup
        ledger.wait(10)
    assert is_alive(pid)  # the server outlives the ledger
    assert bridges(mark) == [pid]

    # A process an earlier run left for a server the ledger does not record.
    orphan = await anyio.to_thread.run_sync(leave_orphan, data, mark)
    assert orphan is not None and is_alive(orphan)

    async with Client(stdio_params(database, **env)) as again:
        detail = await call(
            again, "get_allocation", allocation_id=granted["allocation_id"]
        )
        [adopted] = detail["mcp_servers"]
        assert adopted["pid"] == pid and adopted["status"] == "running"
        async with Client(adopted["endpoint"]) as agent:
            answer = await agent.call_tool("echo", {"text": "adopted"})
        assert text_of(answer) == "adopted"
        assert bridges(mark) == [pid]  # none duplicated
        assert not is_alive(orphan)  # none orphaned
        assert refuses_connections(POOL_MCP_FIRST + 50)

    with sqlite_service(database) as outside:
        assert kinds(process_events(outside, "echo"))[-1] == "Adopted"
        assert kinds(process_events(outside, "orphan")) == ["Registered", "Stopped"]
        assert verify(outside).clean


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


def worker_answer(port: int) -> dict[str, Any] | None:
    """What the worker on the port says of itself (None: nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
            facts: dict[str, Any] = json.loads(reply.read())
            return facts
    except OSError:
        return None


async def test_a_killed_ledger_started_again_starts_a_missing_worker_again(
    tmp_path: Path, mark: str
) -> None:
    """A worker of a live allocation that is gone when the ledger starts again
    (it died while no ledger watched) is started again; the one still
    running is adopted."""
    database = tmp_path / "ledger.db"
    data = tmp_path / "data"
    config = tmp_path / "ledger.toml"
    config.write_text(
        catalog_toml(
            mark, {"echo": {"command": TEST_SERVER}}, pool={"worker_command": WORKER}
        )
    )
    env = {
        "ALLOCATION_LEDGER_CONFIG": str(config),
        "ALLOCATION_LEDGER_DATA_DIRECTORY": str(data),
        MARK: mark,  # the workers inherit the ledger's environment
    }
    with open(tmp_path / "ledger.log", "w") as log:
        ledger = subprocess.Popen(
            [sys.executable, "-m", "allocation_ledger.adapters.cli", "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=server_env(database, **env),
            cwd=tmp_path,
        )
    try:
        client = RawClient(ledger)
        granted = client.call(
            "request_resources", job_id="a", mcp_servers=["echo"], workers=2, pool=POOL
        )
        assert granted["status"] == "active", granted
        before = client.call("get_allocation", allocation_id=granted["allocation_id"])
    finally:
        ledger.kill()  # SIGKILL: no shutdown, no cleanup
        ledger.wait(10)
    kept, lost = before["workers"]
    assert kept["state"] == lost["state"] == "running"
    os.killpg(lost["pid"], signal.SIGKILL)  # dies while no ledger watches
    assert wait_until(lambda: not is_alive(lost["pid"]), 10)
    assert is_alive(kept["pid"])

    async with Client(stdio_params(database, **env)) as again:
        detail = await call(
            again, "get_allocation", allocation_id=granted["allocation_id"]
        )
        now = {w["worker_id"]: w for w in detail["workers"]}
        assert now[kept["worker_id"]]["pid"] == kept["pid"]
        restarted = now[lost["worker_id"]]
        assert restarted["state"] == "running"
        assert restarted["pid"] not in (None, lost["pid"]) and is_alive(
            restarted["pid"]
        )
        assert wait_until(lambda: worker_answer(lost["port"]) is not None, 15)
        facts = worker_answer(lost["port"])
        assert facts is not None and facts["pid"] == restarted["pid"]
        assert facts["env"]["LEDGER_WORKER_ID"] == lost["worker_id"]
        echo = json.loads(facts["env"]["LEDGER_MCP_ENDPOINTS"])["echo"]
        assert echo == detail["mcp_servers"][0]["endpoint"]

    with sqlite_service(database) as outside:
        store = outside.ledger.repository.event_store
        history = list(store.get(worker_process_uuid(lost["worker_id"])))
        assert kinds(history) == [
            "Registered",
            "Started",
            "Ready",
            "Exited",
            "Started",
            "Ready",
        ]
        assert getattr(history[3], "detail", {})["cause"] == "unknown"
        adopted = list(store.get(worker_process_uuid(kept["worker_id"])))
        assert kinds(adopted) == ["Registered", "Started", "Ready", "Adopted"]
        assert verify(outside).clean
