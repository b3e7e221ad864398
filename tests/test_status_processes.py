"""`status` on the MCP servers' processes: whether the process the ledger
recorded still runs, where this machine started it. The ledger records an
exit only while a server watches the process: one that died while no server
ran was shown as running, pid and all."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from allocation_ledger.adapters.provisioning.process_provisioner import (
    ProcessProvisioner,
)
from allocation_ledger.domain.values import AllocationRequest
from tests.cli_support import run_cli
from tests.process_support import (
    POOL,
    TEST_SERVER,
    is_alive,
    marking,
    process_ledgers,
    wait_until,
)


@pytest.fixture
def mark(tmp_path: Path) -> Iterator[str]:
    yield from marking(tmp_path)


def status_of(tmp_path: Path) -> tuple[dict[str, object], str]:
    """The `echo` server as `status --json` shows it, and the table's line."""
    database, data = str(tmp_path / "ledger.db"), str(tmp_path / "data")

    def status(*flags: str) -> str:
        shown = run_cli(
            "status", *flags, cwd=tmp_path, DATABASE=database, DATA_DIRECTORY=data
        )
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    answer = json.loads(status("--json"))
    [pool] = [p for p in answer["pools"] if p["pool"] == POOL]
    [server] = pool["mcp_server_processes"]
    [line] = [x for x in status().splitlines() if "MCP server echo" in x]
    return server, line


def test_status_tells_a_recorded_process_that_died_unwatched(
    mark: str, tmp_path: Path
) -> None:
    with process_ledgers(mark, tmp_path, None) as open_:
        service = open_({"echo": {"command": TEST_SERVER}})
        service.ledger.request(AllocationRequest("a", ("echo",)), pool=POOL)
        record = service.ledger.server_process(POOL, "echo")
        assert record is not None and record.pid is not None
        pid = record.pid
        provisioner = service.ledger.provisioner
        assert isinstance(provisioner, ProcessProvisioner)
        provisioner.close()  # no server watches it now; it keeps running

        running, line = status_of(tmp_path)
        assert (running["pid"], running["process_alive"]) == (pid, True)
        assert f"pid {pid}, restarts 0" in line

        os.killpg(pid, signal.SIGKILL)
        assert wait_until(lambda: not is_alive(pid))
        gone, line = status_of(tmp_path)
        assert (gone["pid"], gone["process_alive"]) == (pid, False)
        assert (
            f"pid {pid} (exited while no ledger server watched it; the next "
            "`serve` records it)"
        ) in line
