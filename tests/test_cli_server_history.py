"""`history --server NAME`: the processes of one MCP server, from the command
line, on a ledger file written through the Python API."""

from __future__ import annotations

import json
from pathlib import Path

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.server_process import ProcessReport
from allocation_ledger.domain.values import AllocationRequest
from tests.cli_support import one_line_error, run_cli


def write_ledger(database: Path) -> None:
    """A ledger where `time` ran one process (started, healthy, stopped) and
    jobs asked for `github` and `time` (the pool knows both)."""
    service = open_service(Settings(store="sqlite", database=database))
    try:
        ledger = service.ledger
        ledger.request(AllocationRequest("job-a", ("github", "time"), 1))
        for kind, facts in (
            ("started", {"argv": ["mcp-server-time"]}),
            ("health_passed", {"tools": ["get_current_time"]}),
            ("stopped", {"forced": False}),
        ):
            ledger.record_server_process(
                ProcessReport(kind, "default", "time", 9000, 41, facts)
            )
    finally:
        service.close()


def test_a_server_that_ran_shows_each_event_of_its_processes(tmp_path: Path) -> None:
    write_ledger(tmp_path / "allocation-ledger.db")
    shown = run_cli("history", "--server", "time", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    for event in ("Started", "HealthPassed", "Stopped"):
        assert event in shown.stdout
    database = tmp_path / "allocation-ledger.db"
    assert shown.stdout.splitlines()[-1] == f"ledger: sqlite {database}, read-only"
    answer = json.loads(
        run_cli("history", "--server", "time", "--json", cwd=tmp_path).stdout
    )
    assert (answer["server"], answer["pool"]) == ("time", "default")
    assert [e["type"] for e in answer["events"]] == [
        "Registered",
        "Started",
        "HealthPassed",
        "Stopped",
    ]


def test_a_server_that_never_ran_is_an_error_naming_those_the_pool_knows(
    tmp_path: Path,
) -> None:
    """A typo ('gihtub') printed an empty table and exit 0: it read as a
    server that never did anything. It is an error (exit 1), in both forms."""
    write_ledger(tmp_path / "allocation-ledger.db")
    for json_flag in ((), ("--json",)):
        line = one_line_error(
            run_cli("history", "--server", "gihtub", *json_flag, cwd=tmp_path), 1
        )
        assert line == (
            "allocation-ledger: no process of MCP server 'gihtub' has run in pool "
            "'default', so it has no history (servers that pool knows: github, "
            "time)"
        )


def test_a_name_no_server_can_have_is_a_usage_error(tmp_path: Path) -> None:
    write_ledger(tmp_path / "allocation-ledger.db")
    completed = run_cli("history", "--server", "Git Hub", cwd=tmp_path)
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert "Traceback" not in completed.stderr
    assert (
        "argument --server: MCP server name 'Git Hub' is invalid: use 1-63 "
        "lowercase letters" in completed.stderr
    )
