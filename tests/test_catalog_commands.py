"""A catalog command naming `python` runs on the ledger's own interpreter."""

from __future__ import annotations

import sys

from allocation_ledger.adapters.config.entries import McpServerEntry
from allocation_ledger.adapters.provisioning.catalog_specs import server_spec


def test_a_bare_python_is_the_ledgers_own_interpreter() -> None:
    for program in ("python", "python3"):
        entry = McpServerEntry(command=[program, "-m", "mcp_server_time"])
        spec = server_spec("time", entry)
        assert spec.command == (sys.executable, "-m", "mcp_server_time")


def test_a_path_or_other_program_is_left_as_given() -> None:
    for command in (["/usr/bin/python3", "-m", "x"], ["uvx", "mcp-server-time"]):
        spec = server_spec("time", McpServerEntry(command=command))
        assert spec.command == tuple(command)


def test_placeholders_and_braces_are_filled_in_for_both_transports() -> None:
    command = ["srv", '--json={{"a":1}}', "--port={port}", "--host={host}"]
    for transport in ("stdio", "http"):
        entry = McpServerEntry(command=command, transport=transport)
        spec = server_spec("h", entry)
        argv = spec.argv("127.0.0.1", 63800)
        child = argv[argv.index("--") + 1 :] if transport == "stdio" else argv
        assert child == ["srv", '--json={"a":1}', "--port=63800", "--host=127.0.0.1"]
        assert child == entry.argv(port=63800, host="127.0.0.1")
