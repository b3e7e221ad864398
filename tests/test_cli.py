"""The installed `allocation-ledger` command, run in a directory of its own:
commands that never invent a ledger, that say which ledger they used, that
read a file nobody may write, and that agree with the MCP tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from allocation_ledger.projections.store import ListingQuery
from tests.cli_support import COMMAND, cli_env, one_line_error, run_cli
from tests.mcp_support import call
from tests.process_support import POOL_MCP_FIRST

pytestmark = pytest.mark.slow

DEMO_PORTS = ("--mcp-ports", f"{POOL_MCP_FIRST}-{POOL_MCP_FIRST + 9}")
"""This test run's own ports for the demo's time server, not 9000 (which a
run beside it may use)."""

START = datetime(2026, 1, 1, tzinfo=UTC)
COMMANDS = "serve demo status init-db history capacity verify rebuild export usage"
COMMANDS += " timeline"
READ_ONLY = (
    ("status",),
    ("history", "alloc-0123456789ab"),
    ("capacity", "--at", "2026-01-01T00:00:00Z"),
    ("verify",),
    ("export",),
    ("usage",),
    ("timeline", "--out", "chart.svg"),
)


def tree(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `directory`: its size, modification time and bytes."""
    return {
        str(p.relative_to(directory)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            p.read_bytes() if p.is_file() else b"",
        )
        for p in sorted(directory.rglob("*"))
    }


@dataclass
class Written:
    """A ledger file written by the Python API; its read models were never
    caught up (no query ran), so they lag behind the log."""

    database: Path
    held: str  # job-a's allocation: 2 workers, still active
    released: str  # job-b's, released after 30 s
    refused: str  # job-c's: 50 workers do not fit


@pytest.fixture
def written(tmp_path: Path) -> Written:
    database = tmp_path / "ledgers" / "ledger.db"
    database.parent.mkdir()
    clock = ManualClock(START)
    service = open_service(Settings(store="sqlite", database=database), clock=clock)
    try:
        ledger = service.ledger
        held = ledger.request(AllocationRequest("job-a", (), 2))
        clock.advance(60)
        done = ledger.request(AllocationRequest("job-b", (), 1))
        clock.advance(30)
        ledger.release(done.allocation.allocation_id)
        clock.advance(10)
        refused = ledger.request(AllocationRequest("job-c", (), 50))
        assert service.store.position() == 0  # nothing folded yet
    finally:
        service.close()
    return Written(
        database,
        held.allocation.allocation_id,
        done.allocation.allocation_id,
        refused.allocation.allocation_id,
    )


@pytest.fixture
def read_only_copy(written: Written, tmp_path: Path) -> Iterator[Path]:
    """A copy of the ledger in a directory, both made read-only with chmod."""
    directory = tmp_path / "backup"
    directory.mkdir()
    copy = directory / "ledger.db"
    shutil.copyfile(written.database, copy)
    copy.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    directory.chmod(0o555)
    try:
        yield copy
    finally:
        directory.chmod(0o755)
        copy.chmod(0o644)


def test_version_names_the_program_and_its_version(tmp_path: Path) -> None:
    completed = run_cli("--version", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert (
        completed.stdout.strip() == f"allocation-ledger {version('allocation-ledger')}"
    )


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: c[0])
def test_a_read_only_command_without_a_ledger_creates_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    line = one_line_error(run_cli(*command, cwd=empty), 1)
    expected = empty / "allocation-ledger.db"
    assert line == (
        f"allocation-ledger: no ledger at {expected} "
        "(set ALLOCATION_LEDGER_DATABASE or --database)"
    )
    assert list(empty.iterdir()) == []


def test_a_typo_in_the_database_path_creates_no_directory(tmp_path: Path) -> None:
    typo = tmp_path / "some" / "typo" / "x.db"
    for command in (("status",), ("verify",), ("rebuild",)):
        line = one_line_error(run_cli(*command, cwd=tmp_path, DATABASE=str(typo)), 1)
        assert line.endswith(
            f"no ledger at {typo} (set ALLOCATION_LEDGER_DATABASE or --database)"
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command", [("init-db",), ("serve",), ("demo",)], ids=lambda c: c[0]
)
def test_commands_that_create_a_ledger_never_create_its_directory(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    missing = tmp_path / "missing" / "ledger.db"
    completed = run_cli(*command, "--database", str(missing), cwd=tmp_path)
    line = one_line_error(completed, 1)
    assert str(missing) in line
    assert f"its directory {missing.parent} does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_init_db_creates_the_file_and_says_where(tmp_path: Path) -> None:
    completed = run_cli("init-db", "--database", "new.db", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert str(tmp_path / "new.db") in completed.stdout
    status = run_cli("status", "--json", "--database", "new.db", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["ledger"]["location"] == str(tmp_path / "new.db")


def test_every_command_takes_database_and_config(tmp_path: Path) -> None:
    for command in COMMANDS.split():
        helped = run_cli(command, "--help", cwd=tmp_path)
        assert helped.returncode == 0, helped.stderr
        assert "--database PATH" in helped.stdout, command
        assert "--config FILE" in helped.stdout, command


def test_database_and_config_choose_the_ledger(
    written: Written, tmp_path: Path
) -> None:
    """--database wins over the environment; --config's file names one too."""
    other = tmp_path / "other.db"
    config = tmp_path / "ledger.toml"
    config.write_text(f'store = "sqlite"\ndatabase = "{written.database}"\n')

    def location(*arguments: str, **settings: str) -> Any:
        completed = run_cli("status", "--json", *arguments, cwd=tmp_path, env=settings)
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)["ledger"]

    assert location("--database", str(written.database), DATABASE=str(other)) == {
        "store": "sqlite",
        "location": str(written.database),
        "read_only": True,
    }
    assert location("--config", str(config))["location"] == str(written.database)
    assert location(CONFIG=str(config))["location"] == str(written.database)
    assert not other.exists()


def test_status_names_its_ledger_and_counts_in_cores_and_mb(
    written: Written, tmp_path: Path
) -> None:
    shown = run_cli("status", "--database", str(written.database), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    first = shown.stdout.splitlines()[0]
    assert first == f"ledger: sqlite {written.database} (read-only)"
    completed = run_cli(
        "status", "--json", "--database", str(written.database), cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    pools = json.loads(completed.stdout)["pools"]
    assert [p["pool"] for p in pools] == ["default"]
    default = pools[0]
    # As get_capacity answers: job-a's 2 workers hold 2 cores and 4096 MB.
    assert (default["total_cpu"], default["total_memory"]) == (16.0, 32768)
    assert (default["allocated_cpu"], default["allocated_memory"]) == (2.0, 4096)
    assert default["allocated_workers"] == 2
    assert default["active_allocations"] == 1
    assert default["worker_enforcement"] == "reserved slots only"


def test_a_read_only_copy_is_inspected_and_verified_untouched(
    written: Written, read_only_copy: Path
) -> None:
    """Its read models lag behind the log, yet every read-only command
    answers from the whole log, and not a byte beside it changes."""
    directory = read_only_copy.parent
    before = tree(directory)
    at = (START + timedelta(seconds=70)).isoformat()
    answers: dict[str, Any] = {}
    for name, arguments in (
        ("status", ("status", "--json")),
        ("verify", ("verify", "--json")),
        ("usage", ("usage", "--json")),
        ("history", ("history", written.released, "--json")),
        ("capacity", ("capacity", "--at", at, "--json")),
    ):
        completed = run_cli(
            *arguments, "--database", str(read_only_copy), cwd=directory
        )
        assert completed.returncode == 0, completed.stderr
        answers[name] = json.loads(completed.stdout)
        assert answers[name]["ledger"]["read_only"] is True
    exported = run_cli("export", "--database", str(read_only_copy), cwd=directory)
    assert exported.returncode == 0, exported.stderr
    assert tree(directory) == before

    report = answers["verify"]
    assert report["clean"] is True, report
    assert report["allocations"] == 3
    assert report["events"] == report["position"] == len(exported.stdout.splitlines())
    assert answers["status"]["pools"][0]["allocated_workers"] == 2
    assert {r["job_id"] for r in answers["usage"]["usage"]} == {
        "job-a",
        "job-b",
        "job-c",
    }
    assert [e["event"] for e in answers["history"]["events"]] == [
        "requested",
        "activated",
        "release_requested",
        "released",
    ]
    held = answers["capacity"]["reservations"]
    assert [r["job_id"] for r in held] == ["job-a", "job-b"]
    assert held[1]["resources"] == {"cpu": 1.0, "memory": 2048, "workers": 1}


@pytest.mark.anyio
async def test_json_answers_are_the_mcp_tools_answers(
    written: Written, tmp_path: Path
) -> None:
    """history, capacity --at and usage print what get_allocation_history,
    get_capacity and get_usage answer, field for field (cores, MB)."""
    at = (START + timedelta(seconds=70)).isoformat()
    until = (START + timedelta(seconds=95)).isoformat()
    printed: dict[str, Any] = {}
    for name, arguments in (
        ("history", ("history", written.released)),
        ("capacity", ("capacity", "--at", at)),
        ("usage", ("usage", "--until", until)),
    ):
        completed = run_cli(
            *arguments, "--json", "--database", str(written.database), cwd=tmp_path
        )
        assert completed.returncode == 0, completed.stderr
        printed[name] = json.loads(completed.stdout)
        del printed[name]["ledger"]
    for key in ("at", "position", "reservations"):
        del printed["capacity"][key]

    copy = tmp_path / "copy.db"
    shutil.copyfile(written.database, copy)
    # Soon after the events (a server's sweeper would expire job-a later on).
    clock = ManualClock(START + timedelta(seconds=120))
    service = open_service(Settings(store="sqlite", database=copy), clock=clock)
    try:
        async with Client(stdio_server(service)) as client:
            told = {
                "history": await call(
                    client, "get_allocation_history", allocation_id=written.released
                ),
                "capacity": await call(client, "get_capacity", at=at),
                "usage": await call(client, "get_usage", until=until),
            }
    finally:
        service.close()
    assert printed == told


def test_usage_and_timeline_check_their_arguments_as_the_tools_do(
    written: Written, tmp_path: Path
) -> None:
    database = ("--database", str(written.database))
    line = one_line_error(
        run_cli(
            "usage",
            "--since",
            "2026-01-02T00:00:00Z",
            "--until",
            "2026-01-01T00:00:00Z",
            *database,
            cwd=tmp_path,
        ),
        2,
    )
    assert line == "allocation-ledger: usage: --since must be before --until"
    # Nothing is billed after now: a --since after it was answered as an
    # empty period (backwards, without --until), as if nothing had been held.
    for until in ((), ("--until", "3000-01-01T00:00:00Z")):
        future = run_cli(
            "usage", "--since", "2999-01-01T00:00:00Z", *until, *database, cwd=tmp_path
        )
        line = one_line_error(future, 2)
        assert line.startswith("allocation-ledger: usage: --since must be before now (")
        assert line.endswith(
            "nothing is billed after now, so a period that starts later holds "
            "nothing yet"
        )
    unknown = (
        "allocation-ledger: pool 'nope' not found: a pool is declared as "
        "[pools.NAME] in the catalog file (docs/provisioning.md)"
    )
    usage = run_cli("usage", "--pool", "nope", *database, cwd=tmp_path)
    assert one_line_error(usage, 1) == unknown
    timeline = run_cli(
        "timeline", "--pool", "nope", "--out", "x.svg", *database, cwd=tmp_path
    )
    assert one_line_error(timeline, 1) == unknown
    assert not (tmp_path / "x.svg").exists()
    before = (START - timedelta(days=1)).isoformat()
    line = one_line_error(
        run_cli(
            "capacity", "--at", before, "--pool", "default", *database, cwd=tmp_path
        ),
        1,
    )
    assert line == f"allocation-ledger: pool 'default' did not exist at {before}"
    # The timeline too: it drew an empty pool before it existed, and charted
    # today's reservations as those of a --since far in the future.
    earlier = run_cli(
        "timeline", "--until", before, "--out", "x.svg", *database, cwd=tmp_path
    )
    assert one_line_error(earlier, 1) == line
    later = run_cli(
        "timeline",
        "--since",
        "2999-01-01T00:00:00Z",
        "--out",
        "x.svg",
        *database,
        cwd=tmp_path,
    )
    assert one_line_error(later, 2).startswith(
        "allocation-ledger: timeline: --since must be before now ("
    )
    assert not (tmp_path / "x.svg").exists()


@pytest.mark.parametrize(
    "arguments",
    [
        ("timeline", "--out", "x.svg", "--until", "9999-12-31T23:59:59-12:00"),
        ("usage", "--since", "0001-01-01T00:00:00+14:00"),
        ("capacity", "--at", "9999-12-31T23:30:00-01:00"),
    ],
)
def test_a_time_beyond_the_calendar_in_utc_is_a_usage_error(
    written: Written, tmp_path: Path, arguments: tuple[str, ...]
) -> None:
    """A time that is still in the calendar where it was written but not in
    UTC stopped `timeline` with an unexpected error (and `get_usage` too):
    it is refused as the argument it is, before the ledger is opened."""
    option, given = arguments[-2:]
    completed = run_cli(*arguments, "--database", str(written.database), cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    assert "Traceback" not in completed.stderr
    assert (
        f"argument {option}: must be a time between 0001-01-01 and 9999-12-31 "
        f"in UTC, got {given}"
    ) in completed.stderr
    assert not (tmp_path / "x.svg").exists()


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_timeline_writes_a_real_png_or_svg_and_nothing_else(
    written: Written, tmp_path: Path
) -> None:
    database = ("--database", str(written.database))
    png = run_cli("timeline", "--out", "chart.png", *database, cwd=tmp_path)
    assert png.returncode == 0, png.stderr
    assert _png_size((tmp_path / "chart.png").read_bytes()) == (960, 720)
    assert f"from sqlite {written.database}, read-only" in png.stdout
    svg = run_cli("timeline", "--out", "chart.svg", *database, cwd=tmp_path)
    assert svg.returncode == 0, svg.stderr
    text = (tmp_path / "chart.svg").read_text()
    assert "<svg" in text and "Pool default" in text and "rejected request" in text

    line = one_line_error(
        run_cli("timeline", "--out", "chart.jpg", *database, cwd=tmp_path), 2
    )
    assert "a chart is written as .svg or .png, not .jpg" in line
    assert not (tmp_path / "chart.jpg").exists()


@pytest.mark.parametrize("command", ["export", "timeline"])
def test_out_into_a_missing_directory_or_onto_a_directory_is_refused(
    written: Written, tmp_path: Path, command: str
) -> None:
    database = ("--database", str(written.database))
    missing = tmp_path / "missing" / "out.svg"
    line = one_line_error(
        run_cli(command, "--out", str(missing), *database, cwd=tmp_path), 2
    )
    assert f"its directory {missing.parent} does not exist" in line
    line = one_line_error(
        run_cli(command, "--out", str(tmp_path), *database, cwd=tmp_path), 2
    )
    assert f"--out {tmp_path} is a directory" in line
    assert not missing.parent.exists()


@pytest.mark.parametrize("named", ["the file", "its -wal", "a hard link"])
def test_out_onto_the_ledger_itself_is_refused_and_the_ledger_kept(
    written: Written, tmp_path: Path, named: str
) -> None:
    """`export --out` the ledger's own file truncated it before reading it:
    the whole ledger was lost. It is refused before anything is opened,
    however the file is named."""
    database = written.database
    before = database.read_bytes()
    out = {
        "the file": database,
        "its -wal": database.with_name(database.name + "-wal"),
        "a hard link": tmp_path / "same.db",
    }[named]
    if named == "a hard link":
        os.link(database, out)
    line = one_line_error(
        run_cli("export", "--out", str(out), "--database", str(database), cwd=tmp_path),
        2,
    )
    assert f"--out {out} would overwrite the ledger {database}" in line
    assert database.read_bytes() == before
    assert not database.with_name(database.name + "-wal").exists()
    verified = run_cli("verify", "--database", str(database), cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr


def test_export_names_its_ledger_on_stderr(written: Written, tmp_path: Path) -> None:
    completed = run_cli(
        "export",
        "--out",
        "log.jsonl",
        "--database",
        str(written.database),
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    records = (tmp_path / "log.jsonl").read_text().splitlines()
    assert re.fullmatch(
        rf"exported {len(records)} events to log.jsonl from sqlite "
        rf"{re.escape(str(written.database))}, read-only\n",
        completed.stderr,
    )


def test_tables_name_their_ledger_in_their_last_line(
    written: Written, tmp_path: Path
) -> None:
    """history and capacity --at printed their tables and never said which
    ledger they read (status says so first, the others last)."""
    last = f"ledger: sqlite {written.database}, read-only"
    for arguments in (
        ("history", written.released),
        ("history", written.refused),
        ("capacity", "--at", (START + timedelta(seconds=70)).isoformat()),
        ("usage",),
    ):
        shown = run_cli(*arguments, "--database", str(written.database), cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[-1] == last, arguments
    deep = tmp_path / ("a-directory-with-a-long-name-" * 4) / "ledger.db"
    deep.parent.mkdir()
    shutil.copyfile(written.database, deep)
    shown = run_cli(
        "capacity", "--at", START.isoformat(), "--database", str(deep), cwd=tmp_path
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[-1] == f"ledger: sqlite {deep}, read-only"


def test_a_malformed_allocation_id_is_a_usage_error_an_unknown_one_not_found(
    written: Written, tmp_path: Path
) -> None:
    """`history nope` said "allocation 'nope' not found", as if such an id
    could exist; the MCP tool says the id has the wrong shape."""
    database = ("--database", str(written.database))
    for malformed in (
        "nope",
        "alloc-0123456789AB",
        "alloc-0123456789a",
        "0123456789ab",
    ):
        refused = run_cli("history", malformed, *database, cwd=tmp_path)
        assert refused.returncode == 2, refused.stderr
        assert refused.stdout == ""
        assert refused.stderr.splitlines()[-1] == (
            "allocation-ledger history: error: argument ALLOCATION_ID: "
            f"{malformed!r} is not an allocation id: one is 'alloc-' followed by "
            "12 lowercase hex digits (0-9, a-f), such as alloc-6cb23e46b979"
        )
    unknown = run_cli("history", "alloc-0123456789ab", *database, cwd=tmp_path)
    assert one_line_error(unknown, 1) == (
        "allocation-ledger: allocation 'alloc-0123456789ab' not found"
    )


def test_demo_then_status_on_the_configured_file(tmp_path: Path) -> None:
    """The demo requests, lists and releases on the file; status shows the result.

    The demo's wording may change; what it did is checked in the file.
    """
    database = tmp_path / "data" / "ledger.db"
    database.parent.mkdir()
    demo = run_cli(
        "demo", *DEMO_PORTS, cwd=tmp_path, timeout=300, DATABASE=str(database)
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert str(database) in out
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
        servers = sorted(capacity.servers)
    finally:
        service.close()

    status = run_cli("status", "--json", cwd=tmp_path, DATABASE=str(database))
    assert status.returncode == 0, status.stderr
    pools = json.loads(status.stdout)["pools"]
    assert [p["pool"] for p in pools] == ["default"]
    default = pools[0]
    assert (default["allocated_cpu"], default["allocated_workers"]) == (0.0, 0)
    assert sorted(s["name"] for s in default["mcp_servers"]) == servers
    assert all(s["references"] == 0 for s in default["mcp_servers"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_ledger_is_named(written: Written, tmp_path: Path) -> None:
    written.database.chmod(0)
    try:
        line = one_line_error(
            run_cli("status", "--database", str(written.database), cwd=tmp_path), 1
        )
    finally:
        written.database.chmod(0o644)
    assert f"cannot read the ledger {written.database}: Permission denied" in line


def _in_a_read_only_directory(
    directory: Path, *arguments: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The command run while `directory` may not be written: by its mode
    (and its files') for a user; for root, whom modes do not stop, on a
    read-only bind mount of it in a mount namespace of its own."""
    if os.geteuid() != 0:
        files = [p for p in directory.iterdir() if p.is_file()]
        for file in files:
            file.chmod(0o444)
        directory.chmod(0o555)
        try:
            return run_cli(*arguments, cwd=cwd)
        finally:
            directory.chmod(0o755)
            for file in files:
                file.chmod(0o644)
    if shutil.which("unshare") is None:
        pytest.skip("root needs unshare for a read-only file system")
    mount = f"mount --bind {directory} {directory} && "
    mount += f"mount -o remount,bind,ro {directory} && "
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", mount + "true"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        pytest.skip("no mount namespace here for a read-only file system")
    return subprocess.run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            mount + 'exec "$@"',
            "sh",
            str(COMMAND),
            *arguments,
        ],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["rebuild", "init-db", "serve"])
def test_a_ledger_that_cannot_be_written_is_named_by_the_commands_that_write(
    written: Written, tmp_path: Path, command: str
) -> None:
    """SQLite says only "unable to open database file" (and init-db ended in
    an unexpected error): the commands that write name the file, the cause
    and the fix; the ones that read still read it."""
    directory = written.database.parent
    before = written.database.read_bytes()
    database = ("--database", str(written.database))
    cause = r"(it is on a read-only file system|permission denied)"
    completed = _in_a_read_only_directory(directory, command, *database, cwd=tmp_path)
    line = one_line_error(completed, 1)
    shown = re.escape(str(written.database))
    assert re.fullmatch(
        rf"allocation-ledger: cannot write the ledger {shown}: "
        rf"{cause} \(make it writable, or set ALLOCATION_LEDGER_DATABASE or --database "
        r"to a ledger this user may write; status, verify and the other commands "
        r"that only read can still read it\)",
        line,
    ), line
    new = directory / "new.db"
    completed = _in_a_read_only_directory(
        directory, "init-db", "--database", str(new), cwd=tmp_path
    )
    line = one_line_error(completed, 1)
    assert f"cannot create the ledger {new}: its directory {directory}: " in line
    assert not new.exists()
    verified = _in_a_read_only_directory(directory, "verify", *database, cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert written.database.read_bytes() == before


def test_tables_sent_to_a_pipe_keep_every_value_whole(
    written: Written, tmp_path: Path
) -> None:
    """Off a terminal, with no COLUMNS, tables are not cut to 80 columns: a
    script reading `history | grep` finds whole times and values."""
    env = cli_env(DATABASE=str(written.database))
    del env["COLUMNS"]
    shown = subprocess.run(
        [str(COMMAND), "history", written.released],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    released_at = (START + timedelta(seconds=90)).isoformat()
    assert released_at in shown.stdout
    assert '"job-b"' in shown.stdout
    assert "…" not in shown.stdout


def test_the_common_options_may_come_before_the_command(
    written: Written, tmp_path: Path
) -> None:
    before = run_cli("--database", str(written.database), "status", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines()[0] == (
        f"ledger: sqlite {written.database} (read-only)"
    )
    # Given on both sides, the one after the command wins.
    both = run_cli(
        "--database",
        str(tmp_path / "elsewhere.db"),
        "status",
        "--database",
        str(written.database),
        cwd=tmp_path,
    )
    assert both.returncode == 0, both.stderr
    assert str(written.database) in both.stdout.splitlines()[0]
