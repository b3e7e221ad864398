"""A command that crashes at start answers at once, with the ledger's real
clock: an MCP server whose process exits before its endpoint answers, or a
worker whose process exits before it is ready, fails its allocation
(`provisioning_failed`) with its exit code and the last lines of its output,
long before its start timeout.
Every process a test starts is killed when it ends (tests/process_support.py)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.process_support import (
    MARK,
    POOL,
    POOL_MCP_FIRST,
    TEST_SERVER,
    kinds,
    marked_processes,
    marking,
    process_events,
    process_ledgers,
)

START_TIMEOUT_SECONDS = 30
SAYS = "crashing on purpose"
CRASH = [
    sys.executable,
    "-c",
    f"import sys; print({SAYS!r}, file=sys.stderr, flush=True); sys.exit(3)",
]
OpenLedger = Callable[..., AllocationService]


@pytest.fixture
def mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """This test's mark, also in the environment workers inherit; every
    marked process is killed when the test ends."""
    for value in marking(tmp_path):
        monkeypatch.setenv(MARK, value)
        yield value


@pytest.fixture
def open_ledger(mark: str, tmp_path: Path) -> Iterator[OpenLedger]:
    """Opens a ledger on the wall clock (no clock is injected) whose catalog
    names `servers` and gives POOL `pool`'s keys."""
    with process_ledgers(mark, tmp_path, None) as open_:
        yield open_


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_server_that_crashes_at_start_fails_at_once_with_its_code_and_output(
    open_ledger: OpenLedger, mark: str, transport: str
) -> None:
    entry = {
        "command": CRASH,
        "transport": transport,
        "start_timeout_seconds": START_TIMEOUT_SECONDS,
    }
    service = open_ledger({"crashing": entry})
    before = service.ledger.pool(POOL).reservations

    result = service.ledger.request(
        AllocationRequest(job_id="crash", servers=("crashing",)), pool=POOL
    )

    allocation = service.ledger.allocation(result.allocation.allocation_id)
    assert allocation.state is AllocationState.FAILED
    error = allocation.error or ""
    assert "MCP server 'crashing' of pool 'procs' did not start" in error
    assert "it exited before its endpoint answered (exit code 3)" in error
    assert "did not answer MCP within" not in error
    assert SAYS in error
    assert allocation.requested_at is not None and allocation.ended_at is not None
    waited = allocation.ended_at - allocation.requested_at
    assert waited < timedelta(seconds=START_TIMEOUT_SECONDS), waited
    events = process_events(service, "crashing")
    assert kinds(events)[-3:] == ["Started", "Exited", "HealthFailed"]
    exited, failed = events[-2:]
    assert exited.detail["code"] == 3
    assert "exit code 3" in failed.detail["reason"]
    assert SAYS in failed.detail["stderr_tail"]
    assert service.ledger.pool(POOL).reservations == before
    assert marked_processes(mark) == []


def test_a_worker_whose_command_crashes_fails_at_once_with_its_code_and_output(
    open_ledger: OpenLedger, mark: str
) -> None:
    service = open_ledger({}, {"worker_command": CRASH})
    before = service.ledger.pool(POOL).reservations

    result = service.ledger.request(
        AllocationRequest(job_id="crash", workers=1), pool=POOL
    )

    # a worker is checked for readiness, as a server is: one that exits
    # first fails its allocation, long before its start timeout
    allocation = service.ledger.allocation(result.allocation.allocation_id)
    assert allocation.state is AllocationState.FAILED
    [slot] = allocation.workers
    error = allocation.error or ""
    assert f"worker {slot.worker_id!r} did not start" in error
    assert "it exited before it was ready (exit code 3)" in error
    assert SAYS in error
    assert allocation.requested_at is not None and allocation.ended_at is not None
    waited = allocation.ended_at - allocation.requested_at
    assert waited < timedelta(seconds=START_TIMEOUT_SECONDS), waited
    record = service.ledger.worker_process(slot.worker_id)
    assert record is not None and record.last_exit is not None
    assert record.status == "exited" and record.cause == "exited"
    assert (record.last_exit["code"], record.last_exit["signal"]) == (3, None)
    assert SAYS in record.last_exit["log_tail"]
    assert service.ledger.pool(POOL).reservations == before
    assert marked_processes(mark) == []


RUN_SAYS = [
    sys.executable,
    "-c",
    "import os, sys; print('ran', 'as', os.getpid(), file=sys.stderr); sys.exit(3)",
]


def test_a_failed_start_quotes_only_its_own_lines_of_the_log(
    open_ledger: OpenLedger,
) -> None:
    """The log keeps every run of a server; a failure quoted the last lines
    of the file, earlier runs' included, which could read as if the server
    had come up. Each failure quotes what its own start wrote."""
    service = open_ledger({"crashing": {"command": RUN_SAYS}})
    errors: list[str] = []
    for job in ("first", "second"):
        result = service.ledger.request(
            AllocationRequest(job_id=job, servers=("crashing",)), pool=POOL
        )
        errors.append(
            service.ledger.allocation(result.allocation.allocation_id).error or ""
        )
    tails = [
        e.detail["stderr_tail"]
        for e in process_events(service, "crashing")
        if kinds([e]) == ["HealthFailed"]
    ]
    assert len(tails) == 2
    for tail, error in zip(tails, errors, strict=True):
        assert tail.count("starting:") == 1, tail
        assert tail.count("ran as ") == 1, tail
        assert tail in error
    pids = [tail.split("ran as ")[1].split()[0] for tail in tails]
    assert pids[0] != pids[1]  # each quotes its own run


def test_a_start_refused_before_spawning_quotes_no_log(
    open_ledger: OpenLedger,
) -> None:
    """A port already in use fails the start before anything runs: nothing
    of the log (an earlier run's lines) is quoted as if it were this one's."""
    service = open_ledger({"crashing": {"command": RUN_SAYS}})
    service.ledger.request(
        AllocationRequest(job_id="earlier", servers=("crashing",)), pool=POOL
    )
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", POOL_MCP_FIRST))
        taken.listen()
        result = service.ledger.request(
            AllocationRequest(job_id="busy", servers=("crashing",)), pool=POOL
        )
    error = service.ledger.allocation(result.allocation.allocation_id).error or ""
    assert f"port {POOL_MCP_FIRST} on 127.0.0.1 is already in use" in error
    assert "last lines of its log" not in error
    assert "ran as " not in error
    last = process_events(service, "crashing")[-1]
    assert kinds([last]) == ["HealthFailed"]
    assert last.detail["stderr_tail"] == ""


NOT_JSON_HTTP = [
    sys.executable,
    "-c",
    "import socket, sys\n"
    "s = socket.socket()\n"
    "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1])))\n"
    "s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.recv(65536)\n"
    "    c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n'\n"
    "              b'Content-Length: 7\\r\\n\\r\\ngarbage')\n"
    "    c.close()\n",
    "{port}",
]
"""Listens on its port and answers every request with a body that is not JSON."""
NOT_JSON_STDIO = [
    sys.executable,
    "-c",
    "import time\nprint('hello, I am no MCP server', flush=True)\ntime.sleep(600)",
]
"""Writes a line that is no JSON-RPC on stdout, then says nothing more."""
SILENT_HTTP = [sys.executable, "-c", "import time; time.sleep(600)"]
"""Never listens on the port it is given."""
MISBEHAVING = {
    "not-json-http": (
        {"command": NOT_JSON_HTTP, "transport": "http"},
        "it answered, but not as an MCP server: MCPError: Failed to parse JSON",
    ),
    "not-json-stdio": (
        {"command": NOT_JSON_STDIO, "transport": "stdio"},
        "it did not answer the MCP handshake on its stdout, so the ledger's "
        "bridge never listened on the port",
    ),
    "silent-http": (
        {"command": SILENT_HTTP, "transport": "http"},
        "nothing listens on the port",
    ),
}


@pytest.mark.parametrize("name", sorted(MISBEHAVING))
def test_a_server_that_never_answers_mcp_fails_saying_what_it_did_instead(
    open_ledger: OpenLedger, mark: str, name: str
) -> None:
    entry, says = MISBEHAVING[name]
    service = open_ledger({name: {**entry, "start_timeout_seconds": 2}})

    result = service.ledger.request(
        AllocationRequest(job_id="odd", servers=(name,)), pool=POOL
    )

    allocation = service.ledger.allocation(result.allocation.allocation_id)
    assert allocation.state is AllocationState.FAILED
    error = allocation.error or ""
    assert f"MCP server '{name}' of pool 'procs' did not start" in error
    assert f"its endpoint did not answer MCP within 2 s ({says}" in error, error
    assert "no answer within 0." not in error
    assert marked_processes(mark) == []


def test_a_server_on_another_path_than_the_catalogs_is_told_apart_from_silence(
    open_ledger: OpenLedger, mark: str
) -> None:
    entry = {
        "command": [*TEST_SERVER, "--transport", "http", "--port", "{port}"],
        "transport": "http",
        "path": "/elsewhere",
        "start_timeout_seconds": 3,
    }
    service = open_ledger({"moved": entry})

    result = service.ledger.request(
        AllocationRequest(job_id="moved", servers=("moved",)), pool=POOL
    )

    error = service.ledger.allocation(result.allocation.allocation_id).error or ""
    assert "it answered, but not as an MCP server: MCPError: Not Found" in error
    assert marked_processes(mark) == []


def test_a_server_on_a_port_another_program_holds_names_the_fix(
    open_ledger: OpenLedger, mark: str
) -> None:
    command = [*TEST_SERVER, "--transport", "http", "--port", "{port}"]
    service = open_ledger({"echo": {"command": command, "transport": "http"}})
    before = service.ledger.pool(POOL).reservations
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", POOL_MCP_FIRST))
        squatter.listen(1)
        result = service.ledger.request(
            AllocationRequest(job_id="squatted", servers=("echo",)), pool=POOL
        )

    allocation = service.ledger.allocation(result.allocation.allocation_id)
    assert allocation.state is AllocationState.FAILED
    assert (
        f"port {POOL_MCP_FIRST} on 127.0.0.1 is already in use by another program "
        "(not a process of this ledger): stop that program, or give pool 'procs' "
        "ports nothing else uses (mcp_ports = [FIRST, LAST] in [pools.procs] of "
        'the catalog; docs/provisioning.md, "Port ranges")'
    ) in (allocation.error or "")
    assert service.ledger.pool(POOL).reservations == before
    assert marked_processes(mark) == []
