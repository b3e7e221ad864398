"""Helpers for the tests of the process provisioner: a catalog whose MCP
servers are real processes, a pool whose ports nothing else on the machine
uses, and the cleanup of every process a test started.

POOL's ports are a block this test run claims for itself when the module is
imported (`claim_port_block`), so two runs of the tests on one machine never
use the same ports.

Every server a test's catalog names carries an environment variable that
marks it as that test's (`LEDGER_TEST_MARK=<tmp_path>`); its bridge and its
children inherit it, so at the end of the test (passed or failed) every
process with the mark is killed, whoever started it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.config.apply import apply_catalog
from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.clock import Clock
from allocation_ledger.domain.results import RequestResult
from allocation_ledger.domain.server_process import server_process_uuid
from allocation_ledger.domain.values import AllocationRequest
from allocation_ledger.domain.worker_process import worker_process_uuid

PYTHON = sys.executable
TEST_SERVER = [PYTHON, str(Path(__file__).with_name("mcp_test_server.py"))]
TIME_SERVER = [PYTHON, "-m", "mcp_server_time"]
MARK = "LEDGER_TEST_MARK"

POOL = "procs"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        return 32_768, 60_999
    return int(low), int(high)


def _binds(port: int) -> bool:
    """Nothing holds 127.0.0.1:port (nor a wildcard address on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


LEGACY_TEST_PORTS = (62_800, 63_899)
"""The fixed ports of the process tests before they claimed blocks (the 49th
pool's ranges): a run of an older checkout may use them at any moment."""
PORT_BLOCK = 100
"""Ports a test run takes: POOL's MCP range, then its worker range."""
_LOCKS = Path(tempfile.gettempdir()) / "allocation-ledger-test-ports"
_held_lock: Any = None  # the open lock file of this run's block, kept till exit


def claim_port_block(size: int = PORT_BLOCK) -> int:
    """The first port of `size` ports this test run has to itself.

    Blocks lie above the kernel's ephemeral range (where no outgoing
    connection takes a port) or, if there is no room there, below it. Each
    is claimed with an exclusive lock on a file in the temporary directory,
    held until this process exits, so test runs side by side on one machine
    take different blocks; a block where anything already listens is
    skipped. The search starts at a place derived from the pid.
    """
    global _held_lock  # noqa: PLW0603 - one block per test run
    low, high = _ephemeral_range()

    def clear(start: int) -> bool:  # of the fixed ports earlier test runs used
        return start + size <= LEGACY_TEST_PORTS[0] or start > LEGACY_TEST_PORTS[1]

    above = [s for s in range(high + 1, 65_536 - size + 1, size) if clear(s)]
    below = [s for s in range(20_000, low - size + 1, size) if clear(s)]
    _LOCKS.mkdir(exist_ok=True)
    starts: list[int] = []
    for blocks in (above, below):
        offset = os.getpid() % len(blocks) if blocks else 0
        starts += blocks[offset:] + blocks[:offset]
    for start in starts:
        lock = (_LOCKS / f"{start}.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        if all(_binds(port) for port in range(start, start + size)):
            _held_lock = lock
            return start
        lock.close()
    msg = f"no block of {size} free ports for the process tests"
    raise RuntimeError(msg)


PORTS_FIRST = claim_port_block()
POOL_MCP_FIRST = PORTS_FIRST
POOL_MCP_LAST = PORTS_FIRST + 59
POOL_WORKER_FIRST = POOL_MCP_LAST + 1
POOL_WORKER_LAST = PORTS_FIRST + PORT_BLOCK - 1
POOL_PORTS = {
    "mcp_ports": [POOL_MCP_FIRST, POOL_MCP_LAST],
    "worker_ports": [POOL_WORKER_FIRST, POOL_WORKER_LAST],
}
"""POOL's port ranges: a block this test run has to itself (`claim_port_block`)."""


def catalog(
    mark: str,
    servers: Mapping[str, Mapping[str, Any]],
    *,
    pool: Mapping[str, Any] | None = None,
) -> Catalog:
    """A catalog of `servers` (name: its `[mcp_servers.NAME]` table), each
    marked as this test's, and POOL (with `pool`'s keys) on this run's ports."""
    entries = {
        name: {**entry, "env": {**entry.get("env", {}), MARK: mark}}
        for name, entry in servers.items()
    }
    pools = {POOL: {**POOL_PORTS, **(pool or {})}}
    return Catalog.model_validate({"mcp_servers": entries, "pools": pools})


def catalog_toml(
    mark: str,
    servers: Mapping[str, Mapping[str, Any]],
    *,
    pool: Mapping[str, Any] | None = None,
) -> str:
    """The same catalog as TOML, for a config file."""
    lines: list[str] = []
    for name, entry in servers.items():
        lines.append(f'[mcp_servers."{name}"]')
        for key, value in entry.items():
            lines.append(f"{key} = {_toml(value)}")
        env = {**entry.get("env", {}), MARK: mark}
        lines.append(f"env = {_toml(env)}")
    lines.append(f'[pools."{POOL}"]')
    for key, value in {**POOL_PORTS, **(pool or {})}.items():
        lines.append(f"{key} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(value)


def marked_processes(mark: str) -> list[int]:
    """Pids of the live processes whose environment carries the mark."""
    wanted = f"{MARK}={mark}".encode()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_marked(mark: str) -> None:
    """SIGKILL every process with the mark (and its group), and wait for them."""
    for pid in marked_processes(mark):
        for kill in (os.killpg, os.kill):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                kill(pid, signal.SIGKILL)
    wait_until(lambda: not marked_processes(mark), timeout=10)


def marking(tmp_path: Path) -> Iterator[str]:
    """A test's mark (for a fixture to yield from): every process with it is
    killed when the test ends, passed or failed."""
    value = str(tmp_path)
    try:
        yield value
    finally:
        kill_marked(value)


def wait_until(condition: Any, timeout: float = 20, interval: float = 0.05) -> bool:
    """Poll `condition()` until it is true (True) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


def refuses_connections(port: int) -> bool:
    """Nothing accepts connections on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def process_events(service: AllocationService, name: str) -> list[Any]:
    """The stored ServerProcess events of server `name` in POOL, in order."""
    store = service.ledger.repository.event_store
    return list(store.get(server_process_uuid(POOL, name)))


def kinds(events: list[Any]) -> list[str]:
    """Event class names, in order."""
    return [type(event).__name__ for event in events]


def worker_events(service: AllocationService, worker_id: str) -> list[Any]:
    """The stored WorkerProcess events of one worker, in order."""
    store = service.ledger.repository.event_store
    return list(store.get(worker_process_uuid(worker_id)))


def facts_on(port: int) -> dict[str, Any] | None:
    """What the worker listening on the port says of itself (None: nothing)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
            facts: dict[str, Any] = json.loads(answer.read())
            return facts
    except OSError:
        return None


def request_in_thread(
    service: AllocationService, request: AllocationRequest
) -> tuple[threading.Thread, dict[str, RequestResult], str]:
    """Start `request` in POOL (request_id "r1") in a thread, for a request
    that blocks while its servers or workers start: (the thread, where its
    result lands under "result", its allocation id)."""
    answers: dict[str, RequestResult] = {}

    def run() -> None:
        answers["result"] = service.ledger.request(request, pool=POOL, request_id="r1")

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers, allocation_id_for_request(POOL, "r1")


OpenProcessLedger = Callable[..., AllocationService]


@contextlib.contextmanager
def process_ledgers(
    mark: str, directory: Path, clock: Clock | None
) -> Iterator[OpenProcessLedger]:
    """Opens ledgers on a SQLite file in `directory` with the process
    provisioner: `open_(servers, pool=None)` gives a catalog of `servers`
    (marked as this test's) and POOL `pool`'s keys, applied as `serve` would.
    `clock`: the ledger's (None: the wall clock). At the end every process a
    ledger started is stopped and each ledger closed, also if the test failed.
    """
    opened: list[AllocationService] = []

    def open_(
        servers: Mapping[str, Mapping[str, Any]],
        pool: Mapping[str, Any] | None = None,
    ) -> AllocationService:
        entries = catalog(mark, servers, pool=pool)
        settings = Settings(
            store="sqlite",
            database=directory / "ledger.db",
            data_directory=directory / "data",
            catalog=entries,
        )
        service = open_service(settings, clock=clock)
        opened.append(service)
        apply_catalog(service.ledger, entries)
        return service

    try:
        yield open_
    finally:
        for service in opened:
            provisioner = service.ledger.provisioner
            if isinstance(provisioner, ProcessProvisioner):
                provisioner.close(stop_all=True)
            service.close()


def kill_on(
    service: AllocationService, name: str, pool: str = POOL
) -> Callable[[], bool]:
    """A condition for `wait_until` that kills MCP server `name` of `pool`
    whenever a process of it runs; true once its supervisor gave up on it
    (failed)."""
    killed: list[int] = []

    def kill_again() -> bool:
        record = service.ledger.server_process(pool, name)
        assert record is not None
        if record.status == "failed":
            return True
        if record.status == "running" and record.pid not in killed:
            assert record.pid is not None
            killed.append(record.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGKILL)
        return False

    return kill_again
