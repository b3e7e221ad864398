"""Every mistake an operator makes with the installed command gets one line
naming the thing and the fix, exit 2 for the command line and settings, 1
otherwise; no traceback."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import pytest

from tests.cli_support import COMMAND, cli_env, one_line_error, run_cli
from tests.postgres import DBNAME, HOST, PORT, USER, require_postgres

pytestmark = pytest.mark.slow


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    completed = run_cli("frobnicate", cwd=tmp_path)
    assert completed.returncode == 2
    assert "invalid choice: 'frobnicate'" in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ("verify", "--time-tolerance", "-1"),
            "argument --time-tolerance: must be 0 or more seconds, got -1",
        ),
        (
            ("verify", "--time-tolerance", "inf"),
            "argument --time-tolerance: must be at most 31622400 seconds (a year), "
            "got inf",
        ),
        (
            ("export", "--since", "-5"),
            "argument --since: must be 0 (the start) or a later position, got -5",
        ),
        (
            ("export", "--since", "100000000000000000000"),
            "argument --since: must be at most 9223372036854775807 (the last a log "
            "can hold), got 100000000000000000000",
        ),
    ],
)
def test_a_negative_tolerance_or_position_is_a_usage_error(
    tmp_path: Path, arguments: tuple[str, ...], message: str
) -> None:
    """A negative tolerance found a healthy ledger broken (exit 1); a
    negative position exported everything: both are refused, naming the
    argument, before anything is opened."""
    completed = run_cli(*arguments, cwd=tmp_path)
    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("by", ["environment", "option"])
def test_a_config_file_that_does_not_exist(tmp_path: Path, by: str) -> None:
    missing = tmp_path / "ledger.toml"
    if by == "environment":
        completed = run_cli("status", cwd=tmp_path, CONFIG=str(missing))
        named = "ALLOCATION_LEDGER_CONFIG"
    else:
        completed = run_cli("status", "--config", str(missing), cwd=tmp_path)
        named = "--config"
    line = one_line_error(completed, 2)
    assert f"the config file {missing} (named by {named}) does not exist" in line


def test_malformed_toml_names_the_file_line_and_column(tmp_path: Path) -> None:
    config = tmp_path / "ledger.toml"
    config.write_text('store = "sqlite"\nhttp_port = \n')
    line = one_line_error(run_cli("status", "--config", str(config), cwd=tmp_path), 2)
    assert line.startswith(f"allocation-ledger: {config}: invalid TOML at line 2")


def test_invalid_json_in_the_tokens_variable(tmp_path: Path) -> None:
    completed = run_cli("serve", "--transport", "http", cwd=tmp_path, TOKENS="[{")
    line = one_line_error(completed, 2)
    assert "ALLOCATION_LEDGER_TOKENS is not valid JSON" in line
    assert "it takes a JSON list" in line


@pytest.mark.parametrize(
    ("entries", "problem", "secret"),
    [
        (
            '[{"subject": "ci", "scopes": ["read"], "token": "short-secret"}]',
            "[0]: token must be at least 16 characters",
            "short-secret",
        ),
        (
            '[{"subject": "ci", "scopes": ["read"], "token_sha256": "not-a-digest"}]',
            "[0].token_sha256: string should match pattern",
            "not-a-digest",
        ),
        ("hunter2-is-not-json", "the file: invalid JSON", "hunter2"),
    ],
)
@pytest.mark.parametrize("where", ["file", "variable"])
def test_a_bad_token_entry_is_one_line_that_never_repeats_the_secret(
    tmp_path: Path, entries: str, problem: str, secret: str, where: str
) -> None:
    """A tokens file that did not validate printed pydantic's report: several
    lines, quoting the entry with its token; a log must never learn one."""
    if where == "file":
        tokens = tmp_path / "tokens.json"
        tokens.write_text(entries)
        completed = run_cli(
            "serve", "--transport", "http", cwd=tmp_path, TOKENS_FILE=str(tokens)
        )
        expected = f"tokens file {tokens} is not a JSON list of tokens: {problem}"
    else:
        completed = run_cli(
            "serve", "--transport", "http", cwd=tmp_path, TOKENS=entries
        )
        if not entries.startswith("["):
            expected = "ALLOCATION_LEDGER_TOKENS is not valid JSON"
        else:
            expected = f"ALLOCATION_LEDGER_TOKENS{problem}"
    line = one_line_error(completed, 2)
    assert expected in line
    assert secret not in line


def test_an_invalid_setting_names_its_variable(tmp_path: Path) -> None:
    line = one_line_error(run_cli("status", cwd=tmp_path, HTTP_PORT="99999"), 2)
    assert (
        "ALLOCATION_LEDGER_HTTP_PORT: input should be less than or equal to 65535"
        in line
    )
    assert "got '99999'" in line


@pytest.mark.parametrize(
    "name",
    [
        "SWEEP_INTERVAL_SECONDS",
        "IDLE_CHECK_INTERVAL_SECONDS",
        "LEASE_WARNING_SECONDS",
        "PROVISIONING_TIMEOUT_SECONDS",
        "HTTP_SESSION_IDLE_SECONDS",
    ],
)
def test_an_endless_interval_is_a_setting_error(tmp_path: Path, name: str) -> None:
    """`inf` passed as seconds: a sweeper that never swept again, or (for
    the session idle time) an unexpected error when serving began."""
    completed = run_cli(
        "serve", "--transport", "http", "--no-auth", cwd=tmp_path, env={name: "inf"}
    )
    line = one_line_error(completed, 2)
    assert line == (
        f"allocation-ledger: invalid settings: ALLOCATION_LEDGER_{name}: "
        "input should be a finite number, got 'inf'"
    )
    assert not (tmp_path / "allocation-ledger.db").exists()


@pytest.mark.parametrize(
    ("name", "value", "minimum"),
    [
        ("SWEEP_INTERVAL_SECONDS", "1e-9", "0.01"),
        ("IDLE_CHECK_INTERVAL_SECONDS", "0.001", "0.01"),
        ("PROVISIONING_TIMEOUT_SECONDS", "0.5", "1"),
    ],
)
def test_an_interval_too_short_to_mean_anything_is_a_setting_error(
    tmp_path: Path, name: str, value: str, minimum: str
) -> None:
    """A sweep every nanosecond ran back to back, holding the store from
    commands; a provisioning timeout under a second took servers still
    starting for interrupted ones. Each is refused with its minimum."""
    completed = run_cli(
        "serve", "--transport", "http", "--no-auth", cwd=tmp_path, env={name: value}
    )
    line = one_line_error(completed, 2)
    assert line == (
        f"allocation-ledger: invalid settings: ALLOCATION_LEDGER_{name}: "
        f"input should be greater than or equal to {minimum}, got '{value}'"
    )
    assert not (tmp_path / "allocation-ledger.db").exists()


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("hunter2-garbage", "is not a PostgreSQL connection string"),
        ("postgresql://ci:hunter2@db:fivefour/ledger", "its port is not a number"),
    ],
)
def test_a_postgres_dsn_that_cannot_be_read_is_a_setting_error(
    tmp_path: Path, dsn: str, problem: str
) -> None:
    """A connection string psycopg could not read ended in an unexpected
    error over two lines (exit 1), quoting part of it: it is a wrong
    setting, named, with the shape it takes, and never echoed (it may hold
    a password)."""
    completed = run_cli("status", cwd=tmp_path, STORE="postgres", POSTGRES_DSN=dsn)
    line = one_line_error(completed, 2)
    named = "allocation-ledger: invalid settings: ALLOCATION_LEDGER_POSTGRES_DSN"
    assert line.startswith(f"{named}: {problem}")
    assert "postgresql://USER:PASSWORD@HOST:PORT/DBNAME" in line
    assert "hunter2" not in line


def test_an_invalid_setting_of_the_config_file_names_the_file_and_key(
    tmp_path: Path,
) -> None:
    """A bad value in the config file was told as the environment variable
    (ALLOCATION_LEDGER_HTTP_PORT), which was not set: the operator looked
    in the wrong place. The file and its key are named; a variable that is
    set, and so wins, is still named as the variable."""
    config = tmp_path / "ledger.toml"
    config.write_text('http_port = "abc"\nsweep_interval_seconds = -1\n')
    line = one_line_error(run_cli("status", "--config", str(config), cwd=tmp_path), 2)
    assert line == (
        f"allocation-ledger: invalid settings: {config}: sweep_interval_seconds: "
        f"input should be greater than or equal to 0.01, got -1; {config}: "
        "http_port: input should "
        "be a valid integer, unable to parse string as an integer, got 'abc'"
    )
    line = one_line_error(
        run_cli(
            "status", "--config", str(config), cwd=tmp_path, SWEEP_INTERVAL_SECONDS="0"
        ),
        2,
    )
    assert "ALLOCATION_LEDGER_SWEEP_INTERVAL_SECONDS: input should be greater" in line
    assert f"{config}: http_port" in line


@pytest.mark.parametrize("command", ["status", "serve"])
def test_a_database_path_that_is_a_directory(tmp_path: Path, command: str) -> None:
    line = one_line_error(
        run_cli(command, "--database", str(tmp_path), cwd=tmp_path), 1
    )
    assert line == (
        f"allocation-ledger: {tmp_path} is a directory, not a ledger file "
        "(set ALLOCATION_LEDGER_DATABASE or --database to a file)"
    )


@pytest.mark.parametrize("command", ["status", "serve"])
def test_a_database_that_is_not_sqlite(tmp_path: Path, command: str) -> None:
    text = tmp_path / "notes.db"
    text.write_text("these are my notes\n")
    line = one_line_error(run_cli(command, "--database", str(text), cwd=tmp_path), 1)
    assert f"{text} is not a SQLite database, so not a ledger" in line
    assert text.read_text() == "these are my notes\n"


def test_a_sqlite_database_that_holds_no_ledger(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE notes (text)")
        connection.commit()
    before = other.read_bytes()
    line = one_line_error(run_cli("verify", "--database", str(other), cwd=tmp_path), 1)
    assert line.startswith(f"allocation-ledger: no ledger at {other} (")
    assert other.read_bytes() == before


@pytest.mark.parametrize("command", ["init-db", "serve", "demo"])
def test_another_applications_sqlite_database_is_never_made_a_ledger(
    tmp_path: Path, command: str
) -> None:
    """init-db (and serve, demo) on another application's SQLite file wrote
    the ledger's tables into it, beside that application's own: pointed at
    the wrong file, an operator changed someone else's database. It is
    refused, naming its tables, and left byte for byte as it was."""
    other = tmp_path / "notes.db"
    with closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE notes (text)")
        connection.execute("INSERT INTO notes VALUES ('keep me')")
        connection.commit()
    before = other.read_bytes()
    line = one_line_error(run_cli(command, "--database", str(other), cwd=tmp_path), 1)
    assert line == (
        f"allocation-ledger: {other} is a SQLite database of something else "
        "(tables notes), not a ledger: nothing was written to it (set "
        "ALLOCATION_LEDGER_DATABASE or --database to a new file or to a ledger)"
    )
    assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.db"]


@pytest.mark.skipif(not Path("/proc/self/mem").is_file(), reason="Linux only")
@pytest.mark.parametrize("command", ["status", "serve"])
def test_a_database_that_cannot_be_read(tmp_path: Path, command: str) -> None:
    """/proc/self/mem is a file that even root cannot read from its start."""
    line = one_line_error(
        run_cli(command, "--database", "/proc/self/mem", cwd=tmp_path), 1
    )
    assert line == (
        "allocation-ledger: cannot read the ledger /proc/self/mem: Input/output error"
    )


def test_a_database_that_is_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "ledger.db"
    os.mkfifo(fifo)
    line = one_line_error(run_cli("status", "--database", str(fifo), cwd=tmp_path), 1)
    assert f"{fifo} is not a regular file, so not a ledger" in line


@pytest.mark.parametrize("command", ["status", "serve"])
def test_a_damaged_database_is_named(tmp_path: Path, command: str) -> None:
    """A file that starts as SQLite but whose pages are garbage."""
    ledger = tmp_path / "ledger.db"
    assert run_cli("init-db", "--database", str(ledger), cwd=tmp_path).returncode == 0
    data = bytearray(ledger.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    ledger.write_bytes(bytes(data))
    line = one_line_error(run_cli(command, "--database", str(ledger), cwd=tmp_path), 1)
    assert str(ledger) in line
    assert "malformed" in line or "not a database" in line


@pytest.mark.postgres
def test_init_db_on_a_postgres_schema_that_does_not_exist(tmp_path: Path) -> None:
    require_postgres()
    completed = run_cli(
        "init-db",
        cwd=tmp_path,
        STORE="postgres",
        POSTGRES_HOST=HOST,
        POSTGRES_PORT=str(PORT),
        POSTGRES_USER=USER,
        POSTGRES_DBNAME=DBNAME,
        POSTGRES_SCHEMA="no_such_schema_here",
    )
    line = one_line_error(completed, 1)
    assert "the schema 'no_such_schema_here' does not exist" in line
    assert 'CREATE SCHEMA "no_such_schema_here"' in line


def test_a_port_in_use_is_said_before_any_serving_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        completed = subprocess.run(
            [
                str(COMMAND),
                "serve",
                "--transport",
                "http",
                "--no-auth",
                "--port",
                str(port),
                "--database",
                str(tmp_path / "ledger.db"),
            ],
            cwd=tmp_path,
            env=cli_env(LOG_LEVEL="INFO"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    line = one_line_error(completed, 1)
    assert line == (
        f"allocation-ledger: cannot listen on 127.0.0.1:{port}: Address already "
        "in use (is another server using it? choose another with --port or "
        "ALLOCATION_LEDGER_HTTP_PORT)"
    )
