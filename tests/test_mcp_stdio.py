"""The MCP server over stdio: `allocation-ledger serve` as a real subprocess."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mcp import Client

from allocation_ledger.domain.server_process import server_process_uuid
from tests.mcp_support import (
    REPO,
    call,
    call_error,
    max_notification_id,
    original_behaviours,
    server_env,
    sqlite_service,
    stdio_params,
)
from tests.process_support import (
    POOL_MCP_FIRST,
    is_alive,
    kinds,
    refuses_connections,
)

pytestmark = pytest.mark.anyio


async def test_the_original_behaviours_over_stdio_are_kept_in_the_file(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    async with Client(stdio_params(database)) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert len(tools) == 16
        history = await original_behaviours(client)
        assert {e["actor"] for e in history["events"]} == {"local"}

        with sqlite_service(database) as outside:
            written = max_notification_id(outside)
        text = await call_error(
            client,
            "request_resources",
            {"job_id": "x" * 100_000, "mcp_servers": [], "workers": "many"},
        )
        assert "job_id" in text
        assert "workers" in text
        text = await call_error(client, "release_resources", {"allocation_id": "bad"})
        assert "allocation_id" in text
        with sqlite_service(database) as outside:
            assert max_notification_id(outside) == written

        allocation_id = history["allocation_id"]
        assert (await call(client, "get_allocation", allocation_id=allocation_id))[
            "state"
        ] == "released"

    # Another server on the same file sees everything: nothing lived only in memory.
    async with Client(stdio_params(database)) as client:
        again = await call(
            client, "get_allocation_history", allocation_id=allocation_id
        )
        assert again == history


def test_stdout_carries_only_protocol_messages(tmp_path: Path) -> None:
    """Logs go to stderr; stdout is the JSON-RPC stream and nothing else."""
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "get_allocation", "arguments": {"allocation_id": "x"}},
        },
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {
                "name": "request_resources",
                "arguments": {"job_id": "raw", "mcp_servers": ["github"], "workers": 1},
            },
        },
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "allocation_ledger.adapters.cli", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env(tmp_path / "ledger.db", ALLOCATION_LEDGER_LOG_LEVEL="INFO"),
        cwd=tmp_path,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        for message in messages:
            process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()
        replies = [json.loads(process.stdout.readline()) for _ in range(3)]
        rest, errors = process.communicate()  # closes stdin: the server stops
    finally:
        watchdog.cancel()
    assert process.returncode == 0, errors
    assert rest == ""
    assert all(r["jsonrpc"] == "2.0" for r in replies)
    by_id = {r["id"]: r for r in replies}
    assert set(by_id) == {1, 2, 3}
    assert by_id[2]["result"]["isError"] is True
    assert by_id[3]["result"]["structuredContent"]["status"] == "active"
    assert "get_allocation" in errors  # its log line went to stderr


def run_demo(tmp_path: Path, first_port: int) -> subprocess.CompletedProcess[str]:
    """`allocation-ledger demo` on a ledger in `tmp_path`, its time server on
    this test run's own ports from `first_port` (not 9000, which another run
    may use)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "allocation_ledger.adapters.cli",
            "demo",
            "--mcp-ports",
            f"{first_port}-{first_port + 9}",
        ],
        capture_output=True,
        text=True,
        env={**server_env(tmp_path / "ledger.db"), "COLUMNS": "200"},
        cwd=REPO,
        # About 15 s on a quiet machine; generous for a loaded CI machine.
        timeout=300,
        check=False,
    )


def test_demo_whose_server_port_is_taken_stops_saying_how_to_go_on(
    tmp_path: Path,
) -> None:
    """With another program on the time server's port, the first request
    failed and the demo skipped the rest of its walk-through, exit 0."""
    port = POOL_MCP_FIRST + 20
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        completed = run_demo(tmp_path, port)
    assert completed.returncode == 1, completed.stdout + completed.stderr
    assert "Traceback" not in completed.stderr
    said, fix = completed.stderr.splitlines()
    assert said.startswith(
        "allocation-ledger: the demo's first request failed, so it stops here: "
        f"MCP server 'time' of pool 'default' did not start: port {port} on "
        "127.0.0.1 is already in use by another program"
    )
    assert fix == (
        "For the demo, the simplest fix is other ports: "
        "`allocation-ledger demo --mcp-ports 62000-62009`"
    )
    assert "agent B" not in completed.stdout


def test_demo_starts_the_server_and_drives_it_with_a_client(tmp_path: Path) -> None:
    completed = run_demo(tmp_path, POOL_MCP_FIRST)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "Connected over stdio to allocation-ledger" in out, out
    for tool in (
        "get_capacity",
        "request_resources",
        "list_allocations",
        "renew_allocation",
        "release_resources",
        "get_allocation_history",
    ):
        assert f"→ {tool}(" in out
    assert "replayed=True" in out
    assert "Insufficient workers: requested" in out
    assert "already_released" in out
    # One agent blocked in its call, granted when another released.
    assert "wait=True, block_seconds=60" in out
    assert (
        "progress 1: queued at position 1 of 1 in pool default, "
        "waiting for 8 workers (7 free)"
    ) in out
    assert "agent B's call returned" in out
    assert str(tmp_path / "ledger.db") in out
    # The time server: started for the first request, called by an agent at
    # the endpoint handed out, shared by the second, stopped once idle.
    endpoint = f"http://localhost:{POOL_MCP_FIRST}/mcp"
    assert f"time {endpoint} (started for it)" in out
    assert f"time {endpoint} (already running)" in out
    assert "the same process" in out
    answered = re.search(r"it answered: current time (\S+) \(UTC\)", out)
    assert answered is not None, out
    told = datetime.fromisoformat(answered.group(1))
    assert abs(told - datetime.now(UTC)) < timedelta(minutes=5)
    assert "time stopped: running MCP servers: none" in out
    assert f"its port {POOL_MCP_FIRST} refuses connections" in out
    with sqlite_service(tmp_path / "ledger.db") as service:
        capacity = service.read_models.capacity()
        assert capacity is not None
        assert capacity.live_allocations == 0
        assert capacity.servers == {}
        events = list(
            service.ledger.repository.event_store.get(
                server_process_uuid("default", "time")
            )
        )
    assert kinds(events) == ["Registered", "Started", "HealthPassed", "Stopped"]
    pid = getattr(events[1], "pid", None)
    assert pid is not None and not is_alive(pid)
    assert refuses_connections(POOL_MCP_FIRST)
    assert not list((tmp_path / "ledger.db.d" / "run").glob("*.json"))


def test_a_line_that_is_not_a_message_gets_an_error_reply_and_serving_goes_on(
    tmp_path: Path,
) -> None:
    """JSON-RPC asks for an error reply: -32700 (id null) for a line that is not
    JSON, -32600 for JSON that is no message (with its id when it has one),
    as over HTTP. Before, no reply came, and the client waited for ever."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw-test", "version": "0"},
        },
    }
    lone_surrogate = b'{"jsonrpc": "2.0", "id": 2, "method": "ping", "x": "\\ud800"}'
    malformed = [
        (lone_surrogate, -32700, None),
        (b"this is not JSON", -32700, None),
        (b'{"jsonrpc": "2.0", "id": 3, "method": ', -32700, None),
        (b"\xff\xfe\x00 not UTF-8", -32700, None),
        (b'"' + b"x" * 100_000 + b'\\ud800"', -32700, None),
        (b"[1, 2]", -32600, None),
        (b'{"jsonrpc": "2.0", "id": 4, "method": 5}', -32600, 4),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "allocation_ledger.adapters.cli", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(tmp_path / "ledger.db"),
        cwd=tmp_path,
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps(initialize).encode() + b"\n")
        process.stdin.flush()
        assert json.loads(process.stdout.readline())["id"] == 1
        process.stdin.write(
            b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n'
        )
        for line, code, request_id in malformed:
            process.stdin.write(line + b"\n\n")  # a blank line needs no answer
            process.stdin.flush()
            reply = json.loads(process.stdout.readline())
            assert reply["jsonrpc"] == "2.0"
            assert reply["id"] == request_id, line[:60]
            assert reply["error"]["code"] == code, line[:60]
            assert len(reply["error"]["message"]) < 400
        process.stdin.write(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 9,
                    "method": "tools/call",
                    "params": {"name": "get_capacity", "arguments": {}},
                }
            ).encode()
            + b"\n"
        )
        process.stdin.flush()
        served = json.loads(process.stdout.readline())
        assert served["id"] == 9
        assert served["result"]["structuredContent"]["total_workers"] == 10
        rest, errors = process.communicate()  # closes stdin: the server stops
    finally:
        watchdog.cancel()
    assert process.returncode == 0, errors
    assert rest == b""
