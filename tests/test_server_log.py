"""The server's log on stderr: plain lines (time, level, logger, message)
or, with --log-format json, one JSON object per line; never a boxed
traceback, and stdout stays the protocol's."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from pathlib import Path

import pytest

from tests.cli_support import COMMAND, cli_env

pytestmark = pytest.mark.slow

PLAIN = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"[\w.]+: .*"
)
BOX = re.compile(r"[╭╮╰╯│─━┃]")
MESSAGES = [
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "log-test", "version": "0"},
        },
    },
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "prompts/get", "params": {"name": "nope"}},
    {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "get_allocation", "arguments": {"allocation_id": "x"}},
    },
    {"jsonrpc": "2.0", "id": 4, "method": "tools/list"},
]


def serve_stdio(tmp_path: Path, *arguments: str) -> tuple[list[str], str]:
    """Serve over stdio, send MESSAGES, close stdin; (stdout replies, stderr)."""
    process = subprocess.Popen(
        [str(COMMAND), "serve", "--database", str(tmp_path / "ledger.db"), *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(LOG_LEVEL="DEBUG"),
        cwd=tmp_path,
    )
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        for message in MESSAGES:
            process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()
        replies = [process.stdout.readline() for _ in range(4)]
        rest, errors = process.communicate()
    finally:
        watchdog.cancel()
    assert process.returncode == 0, errors
    return [*replies, *rest.splitlines()], errors


def test_the_plain_log_is_lines_of_time_level_logger_message(tmp_path: Path) -> None:
    replies, errors = serve_stdio(tmp_path)
    assert {json.loads(r)["id"] for r in replies} == {1, 2, 3, 4}
    lines = errors.splitlines()
    assert lines, "the server logged nothing at DEBUG"
    assert not BOX.search(errors), errors
    records = [line for line in lines if not line.startswith("  ")]
    for line in records:
        assert PLAIN.fullmatch(line), line
    assert lines[0] == records[0]  # a traceback only ever follows a record
    assert any("allocation_ledger.serve: ledger: sqlite" in line for line in lines)
    assert any("get_allocation" in line for line in lines)


def test_the_json_log_is_one_object_per_line(tmp_path: Path) -> None:
    replies, errors = serve_stdio(tmp_path, "--log-format", "json")
    assert len(replies) == 4
    entries = [json.loads(line) for line in errors.splitlines()]
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert PLAIN.fullmatch(
            f"{entry['time']} {entry['level']} {entry['logger']}: {entry['message']}"
        ), entry
    assert any(e["message"].startswith("ledger: sqlite") for e in entries)


def test_the_log_format_is_a_setting_too(tmp_path: Path) -> None:
    process = subprocess.run(
        [str(COMMAND), "serve", "--database", str(tmp_path / "ledger.db")],
        input="",
        env=cli_env(LOG_LEVEL="INFO", LOG_FORMAT="json"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr
    entries = [json.loads(line) for line in process.stderr.splitlines()]
    assert any(e["logger"] == "allocation_ledger.serve" for e in entries)


def test_the_config_lines_are_logged_whole(tmp_path: Path) -> None:
    """What the server applies from its catalog is the operator's own text:
    never cut like the values a caller sends (the cut is for those)."""
    config = tmp_path / "ledger.toml"
    config.write_text(
        "[pools.a-pool-with-a-rather-long-name-for-its-log-line]\n"
        "cpu = 8\nmemory = 8192\nworkers = 4\n"
        'advertise_host = "ledger-worker-host.example.internal"\n'
    )
    _, errors = serve_stdio(tmp_path, "--config", str(config))
    lines = [line for line in errors.splitlines() if ": config: " in line]
    assert lines, errors
    assert any("a-pool-with-a-rather-long-name-for-its-log-line" in x for x in lines)
    assert not any("characters)" in line for line in lines), lines
