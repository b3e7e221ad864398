"""The demo's catalog and the example config file are valid catalogs of the
same shape (the demo itself runs in tests/test_mcp_stdio.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from allocation_ledger.adapters.cli.demo_setup import (
    IDLE_TIMEOUT_SECONDS,
    SERVER,
    demo_catalog,
    parse_port_range,
)
from allocation_ledger.adapters.config.settings import Settings
from tests.mcp_support import REPO

EXAMPLE = REPO / "examples" / "ledger.toml"


def settings_of(path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("IDLE_CHECK_INTERVAL_SECONDS", "STOP_MCP_SERVERS_ON_EXIT"):
        monkeypatch.delenv("ALLOCATION_LEDGER_" + name, raising=False)
    monkeypatch.setenv("ALLOCATION_LEDGER_CONFIG", str(path))
    return Settings()


def test_the_demo_catalog_runs_the_time_server_with_this_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "demo.toml"
    path.write_text(demo_catalog())
    settings = settings_of(path, monkeypatch)
    entry = settings.catalog.mcp_servers[SERVER]
    assert list(entry.command) == [sys.executable, "-m", "mcp_server_time"]
    assert entry.transport == "stdio"
    assert entry.idle_timeout_seconds == IDLE_TIMEOUT_SECONDS
    assert settings.catalog.effective_provisioner == "process"
    assert settings.idle_check_interval_seconds < IDLE_TIMEOUT_SECONDS
    assert settings.stop_mcp_servers_on_exit


def test_the_example_config_file_names_the_same_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_of(EXAMPLE, monkeypatch)
    entry = settings.catalog.mcp_servers[SERVER]
    assert list(entry.command) == ["python", "-m", "mcp_server_time"]
    assert entry.transport == "stdio"
    assert settings.catalog.effective_provisioner == "process"
    assert settings.catalog.pools["default"].advertise_host == "localhost"


def test_the_demo_can_run_its_servers_on_ports_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "demo.toml"
    path.write_text(demo_catalog(parse_port_range("62000-62009")))
    settings = settings_of(path, monkeypatch)
    assert settings.catalog.pools["default"].mcp_span == (62000, 62009)
    assert "pools" not in demo_catalog()  # otherwise the pool's own


@pytest.mark.parametrize("text", ["62000", "62009-62000", "0-10", "a-b", "1-70000"])
def test_a_port_range_for_the_demo_is_first_dash_last(text: str) -> None:
    with pytest.raises(ValueError, match="FIRST"):
        parse_port_range(text)
