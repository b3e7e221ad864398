"""Helpers for the tests of the process provisioner: a catalog whose MCP
servers are real processes, a pool whose ports nothing else on the machine
uses, and the cleanup of every process a test started.

Every server a test's catalog names carries an environment variable that
marks it as that test's (`LEDGER_TEST_MARK=<tmp_path>`); its bridge and its
children inherit it, so at the end of the test (passed or failed) every
process with the mark is killed, whoever started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.server_process import server_process_uuid

PYTHON = sys.executable
TEST_SERVER = [PYTHON, str(Path(__file__).with_name("mcp_test_server.py"))]
TIME_SERVER = [PYTHON, "-m", "mcp_server_time"]
MARK = "LEDGER_TEST_MARK"

POOL = "procs"
FILLER_POOLS = tuple(f"filler-{i:02d}" for i in range(48))
"""Pools registered before POOL, so that POOL is the 49th pool besides the
default one: its ports (MCP servers from 63800) are above the kernel's
ephemeral range and far from those other tests use."""
POOL_MCP_FIRST = 10_000 + 1_100 * len(FILLER_POOLS) + 1_000


def catalog(
    mark: str,
    servers: Mapping[str, Mapping[str, Any]],
    *,
    pool: Mapping[str, Any] | None = None,
) -> Catalog:
    """A catalog of `servers` (name: its `[mcp_servers.NAME]` table), each
    marked as this test's, and the filler pools then POOL (with `pool`'s
    keys)."""
    entries = {
        name: {**entry, "env": {**entry.get("env", {}), MARK: mark}}
        for name, entry in servers.items()
    }
    pools: dict[str, Any] = {name: {} for name in FILLER_POOLS}
    pools[POOL] = dict(pool or {})
    return Catalog.model_validate({"mcp_servers": entries, "pools": pools})


def catalog_toml(mark: str, servers: Mapping[str, Mapping[str, Any]]) -> str:
    """The same catalog as TOML, for a config file."""
    lines: list[str] = []
    for name, entry in servers.items():
        lines.append(f'[mcp_servers."{name}"]')
        for key, value in entry.items():
            lines.append(f"{key} = {_toml(value)}")
        env = {**entry.get("env", {}), MARK: mark}
        lines.append(f"env = {_toml(env)}")
    for pool in (*FILLER_POOLS, POOL):
        lines.append(f'[pools."{pool}"]')
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
