"""Where the ledger lives, said plainly; and its SQLite file, checked before
it is opened and opened for reading only.

A SQLite ledger is one file. Before it is opened, `check_sqlite_file` turns
every way the configured path can be wrong into one DatabaseError naming the
path: a directory, a missing directory, an unreadable file, a file that is
not SQLite. Commands that only read (`read_only_uri`) open it with SQLite's
read-only mode, so a backup copy or a file nobody may write can be read:

- while a server has it open (its write-ahead log, `<file>-wal`, exists),
  through that log, as any reader does;
- otherwise as an immutable file: nothing is locked and nothing (not even
  SQLite's `-wal` and `-shm` side files) is created beside it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from allocation_ledger.adapters.config.settings import Settings

SQLITE_EVENTS_TABLE = "stored_events"
"""The event log's table in a SQLite ledger (the library's name for it)."""
SQLITE_HEADER = b"SQLite format 3\x00"
DATABASE_HINT = "set ALLOCATION_LEDGER_DATABASE or --database"


class DatabaseError(Exception):
    """The ledger's database cannot be used; the message says what to do."""


class LedgerMissingError(DatabaseError):
    """There is no ledger at the configured place, and nothing was created
    there. `where`: the place (a file path, or a PostgreSQL database)."""

    def __init__(self, where: str, hint: str = DATABASE_HINT) -> None:
        super().__init__(f"no ledger at {where} ({hint})")
        self.where = where


def check_sqlite_file(path: Path, *, must_exist: bool) -> None:
    """Check that `path` can be a ledger's SQLite file before it is opened.

    `must_exist`: a command that only reads needs the file
    (LedgerMissingError when there is none); one that may create it needs
    its directory, never creating that. Raises DatabaseError, naming the
    path, when it is a directory, its directory is missing, it is not a
    regular file, it cannot be read, or it is not a SQLite database; and,
    unless `must_exist` (commands that write), when it or the directory it
    is to be created in may not be written, or it is another application's
    SQLite database (tables, but no event log).
    """
    shown = str(path.absolute())
    if path.is_dir():
        msg = f"{shown} is a directory, not a ledger file ({DATABASE_HINT} to a file)"
        raise DatabaseError(msg)
    if not path.exists():
        if must_exist:
            raise LedgerMissingError(shown)
        directory = path.absolute().parent
        if not directory.is_dir():
            what = "is not a directory" if directory.exists() else "does not exist"
            msg = (
                f"cannot create the ledger {shown}: its directory {directory} "
                f"{what} (create it first, or {DATABASE_HINT})"
            )
            raise DatabaseError(msg)
        _check_writable(
            directory,
            f"cannot create the ledger {shown}: its directory",
            f"{DATABASE_HINT} to a file in a directory this user may write",
        )
        return
    if not path.is_file():  # a FIFO, a device: reading it could block
        msg = f"{shown} is not a regular file, so not a ledger ({DATABASE_HINT})"
        raise DatabaseError(msg)
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as error:
        msg = f"cannot read the ledger {shown}: {error.strerror or error}"
        raise DatabaseError(msg) from None
    if header and header != SQLITE_HEADER:
        msg = f"{shown} is not a SQLite database, so not a ledger ({DATABASE_HINT})"
        raise DatabaseError(msg)
    if not must_exist:
        _check_writable(
            path,
            "cannot write the ledger",
            f"{DATABASE_HINT} to a ledger this user may write; status, verify "
            "and the other commands that only read can still read it",
        )
        if header:
            _check_not_foreign(path, shown)


def _check_not_foreign(path: Path, shown: str) -> None:
    """Raise DatabaseError when the SQLite file at `path` holds tables but no
    ledger's event log: another application's database, which a command
    that creates the ledger's tables would otherwise write into. A file it
    cannot read is left for SQLite to name when it is opened."""
    try:
        uri = read_only_uri(path)
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            tables = [
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY name"
                )
            ]
    except sqlite3.DatabaseError:
        return
    if not tables or SQLITE_EVENTS_TABLE in tables:
        return
    named = ", ".join(tables[:3]) + (", …" if len(tables) > 3 else "")
    msg = (
        f"{shown} is a SQLite database of something else (tables {named}), not "
        f"a ledger: nothing was written to it ({DATABASE_HINT} to a new file "
        "or to a ledger)"
    )
    raise DatabaseError(msg)


def _check_writable(path: Path, what: str, otherwise: str) -> None:
    """Raise DatabaseError (`what` PATH: the cause (make it writable, or
    `otherwise`)) when this process may not write `path`: a read-only file
    system, or no permission. SQLite itself only says "unable to open
    database file"."""
    if os.access(path, os.W_OK):
        return
    probe = path if path.is_dir() else path.absolute().parent
    cause = "it is on a read-only file system"
    try:
        if not os.statvfs(probe).f_flag & os.ST_RDONLY:
            cause = "permission denied"
    except OSError:
        cause = "permission denied"
    msg = f"{what} {path.absolute()}: {cause} (make it writable, or {otherwise})"
    raise DatabaseError(msg)


def read_only_uri(path: Path) -> str:
    """The SQLite URI that opens the ledger file at `path` for reading only
    (see the module's docstring for when it is read as immutable)."""
    resolved = path.resolve()
    wal = resolved.with_name(resolved.name + "-wal")
    uri = f"file:{quote(str(resolved))}?mode=ro"
    return uri if wal.exists() else uri + "&immutable=1"


def check_ledger_tables(uri: str, shown: str) -> None:
    """Check that the SQLite database at `uri` holds a ledger's event log.

    Raises DatabaseError (naming `shown`) when it is not a database SQLite
    can read, or LedgerMissingError when it holds no ledger.
    """
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            row = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (SQLITE_EVENTS_TABLE,),
            ).fetchone()
    except sqlite3.DatabaseError as error:
        msg = f"cannot read the ledger {shown}: {error}"
        raise DatabaseError(msg) from None
    if row is None:
        raise LedgerMissingError(shown, f"the file has no event log; {DATABASE_HINT}")


def ledger_location(settings: Settings) -> str:
    """Where the ledger is, as an operator names it: the SQLite file's
    absolute path, `postgresql://host:port/dbname (schema S)`, or `memory`."""
    if settings.store == "sqlite":
        return str(settings.database.absolute())
    if settings.store == "postgres":
        where = (
            f"postgresql://{settings.postgres_host}:{settings.postgres_port}/"
            f"{settings.postgres_dbname}"
        )
        schema = settings.postgres_schema
        return f"{where} (schema {schema})" if schema else where
    return "memory"


def ledger_description(settings: Settings, *, read_only: bool) -> dict[str, Any]:
    """The ledger a command used, for JSON: store, location, read_only."""
    return {
        "store": settings.store,
        "location": ledger_location(settings),
        "read_only": read_only,
    }
