"""The `allocation-ledger` command line on a SQLite file named by the environment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from allocation_ledger.adapters.cli import main
from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.values import AllocationState, Resources
from allocation_ledger.projections.store import ListingQuery
from tests.process_support import POOL_MCP_FIRST

DEMO_PORTS = ("--mcp-ports", f"{POOL_MCP_FIRST}-{POOL_MCP_FIRST + 9}")
"""This test run's own ports for the demo's time server, not 9000 (which a
run beside it may use)."""


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "data" / "ledger.db"
    monkeypatch.chdir(tmp_path)
    for name in ("STORE", "CONFIG"):
        monkeypatch.delenv(f"ALLOCATION_LEDGER_{name}", raising=False)
    monkeypatch.setenv("ALLOCATION_LEDGER_DATABASE", str(path))
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping in rich's tables
    return path


def status(capfd: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    assert main(["status", "--json"]) == 0
    printed = capfd.readouterr().out
    parsed: list[dict[str, object]] = json.loads(printed)
    return parsed


def test_demo_then_status_on_the_configured_file(
    database: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The demo requests, lists and releases on the file; status shows the result.

    The demo's wording may change; what it did is checked in the file.
    """
    assert main(["demo", *DEMO_PORTS]) == 0
    out = capfd.readouterr().out
    assert database.exists()
    assert str(database.resolve()) in out
    printed = set(re.findall(r"alloc-[0-9a-f]{12}", out))
    for word in ("active", "released", "failed"):
        assert word in out

    service = open_service(Settings(store="sqlite", database=database))
    try:
        rows = service.read_models.allocations(ListingQuery())
        states = [r.state for r in rows]
        assert {r.allocation_id for r in rows} == printed
        assert states.count("released") >= 2
        assert states.count("failed") >= 1
        assert not [r for r in rows if AllocationState(r.state).is_live]
        capacity = service.read_models.capacity()
        assert capacity is not None
        assert capacity.reserved == Resources()
        servers = sorted(capacity.servers)
    finally:
        service.close()

    pools = status(capfd)
    assert [p["pool"] for p in pools] == ["default"]
    default = pools[0]
    assert default["total"] == {
        "cpu_millicores": 16_000,
        "memory_mib": 32_768,
        "workers": 10,
    }
    assert default["reserved"] == {"cpu_millicores": 0, "memory_mib": 0, "workers": 0}
    assert default["live_allocations"] == 0
    listed = default["servers"]
    assert isinstance(listed, list)
    assert sorted(s[0] for s in listed) == servers
    assert all(s[2] == 0 for s in listed)  # idle: nobody holds them

    # Again on the same file: the history grows, nothing is left held.
    assert main(["demo", *DEMO_PORTS]) == 0
    capfd.readouterr()
    service = open_service(Settings(store="sqlite", database=database))
    try:
        assert len(service.read_models.allocations(ListingQuery())) == 2 * len(rows)
    finally:
        service.close()
    assert status(capfd)[0]["reserved"] == default["reserved"]


def test_status_on_a_new_file_shows_the_default_pool(
    database: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pools = status(capfd)
    assert len(pools) == 1
    assert pools[0]["pool"] == "default"
    assert pools[0]["total"] == {
        "cpu_millicores": 16_000,
        "memory_mib": 32_768,
        "workers": 10,
    }


def test_a_database_that_cannot_be_opened_exits_2_and_says_why(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ALLOCATION_LEDGER_STORE", raising=False)
    monkeypatch.delenv("ALLOCATION_LEDGER_CONFIG", raising=False)
    monkeypatch.setenv("ALLOCATION_LEDGER_DATABASE", str(tmp_path))  # a directory
    assert main(["status", "--json"]) == 2
    captured = capfd.readouterr()
    assert captured.out == ""
    assert "cannot open the ledger" in captured.err


def test_an_unknown_command_is_a_usage_error(
    database: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["frobnicate"])
    assert exited.value.code == 2
    assert "invalid choice" in capfd.readouterr().err
