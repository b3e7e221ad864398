"""Who may serve a PostgreSQL ledger: one server that runs processes, or any
number that only hand out addresses.

The process provisioner runs the MCP servers and workers of the ledger's
pools on its own machine and keeps, in its memory and data directory, which
process serves which server. Two ledger servers with the process provisioner
on one database would each start the processes of the requests they get:
two processes for the same MCP server of the same pool (or a start that
fails on a port the other holds), and releases, expiries and idle stops
decided by one server that cannot stop the processes of the other. So on
PostgreSQL every ledger server takes an advisory lock of its database and
schema (docs/deployment.md, "Several servers"):

- with the process provisioner, in exclusive mode: it is the only server of
  the ledger, and every pool's processes run on its machine;
- with the endpoints provisioner, in shared mode: any number may serve
  together (nothing runs processes), but none beside a process server.

A server that cannot take its lock stops at start with ServerLockError,
naming the server that holds it. The lock is held by a connection of its own
for as long as the server runs; PostgreSQL drops it when that connection
ends (the server exits or dies).
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from typing import Any, Literal

import psycopg

Mode = Literal["exclusive", "shared"]
APPLICATION_NAME_LIMIT = 63
"""PostgreSQL keeps the first 63 bytes of an application_name."""


class ServerLockError(Exception):
    """Another ledger server holds the lock this one needs; `holders` names
    them (application names: what, pid and host)."""

    def __init__(self, message: str, holders: list[str]) -> None:
        super().__init__(message)
        self.holders = holders


def lock_key(schema: str) -> int:
    """The advisory lock's key (a signed 64-bit integer) for the ledger in
    `schema` (advisory locks belong to a database, so the schema is in it)."""
    digest = hashlib.sha256(f"allocation-ledger:servers:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def describe_self(mode: Mode) -> str:
    """How this server names itself to the others (its application_name)."""
    what = "process provisioner" if mode == "exclusive" else "endpoints"
    text = f"allocation-ledger pid {os.getpid()} on {socket.gethostname()} ({what})"
    return text[:APPLICATION_NAME_LIMIT]


class ServerLock:
    """The lock of one ledger server on its PostgreSQL ledger (see the module).

    `conninfo`: psycopg connection keywords; `schema`: the ledger's schema;
    `mode`: exclusive (process provisioner) or shared (endpoints).
    Raises ServerLockError when another server holds the lock in a mode
    that excludes this one; psycopg's errors when the database is unreachable.
    """

    def __init__(self, conninfo: dict[str, Any], schema: str, mode: Mode) -> None:
        self.key = lock_key(schema)
        self.mode = mode
        self._guard = threading.Lock()
        self._connection = psycopg.connect(
            **conninfo, autocommit=True, application_name=describe_self(mode)
        )
        take = (
            "pg_try_advisory_lock"
            if mode == "exclusive"
            else "pg_try_advisory_lock_shared"
        )
        try:
            row = self._connection.execute(f"SELECT {take}(%s)", (self.key,)).fetchone()
            if row is None or not row[0]:
                holders = self.holders()
                self._connection.close()
                raise ServerLockError(self._refusal(holders), holders)
        except BaseException:
            self._connection.close()
            raise

    def holders(self) -> list[str]:
        """The application names of the other sessions that hold the lock."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        with self._guard:  # the writers' lock asks from other threads
            rows = self._connection.execute(
                "SELECT a.application_name, l.mode FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                "AND l.classid = %s AND l.objid = %s AND l.pid <> pg_backend_pid() "
                "AND l.database = (SELECT oid FROM pg_database "
                "WHERE datname = current_database())",
                (unsigned >> 32, unsigned & 0xFFFF_FFFF),
            ).fetchall()
        return sorted(str(name) or "an unnamed session" for name, _ in rows)

    def others_serve(self) -> bool:
        """Whether another server holds the lock too (shared mode: other
        endpoints servers on this ledger). Raises psycopg's errors."""
        return bool(self.holders())

    def _refusal(self, holders: list[str]) -> str:
        by = "; ".join(holders) or "another ledger server"
        if self.mode == "exclusive":
            return (
                f"another ledger server serves this ledger ({by}): with the "
                "process provisioner a ledger server must be the only one on "
                "its database and schema, so that no MCP server or worker is "
                "ever started by two (docs/deployment.md, 'Several servers')"
            )
        return (
            f"a ledger server with the process provisioner serves this ledger "
            f"({by}): it must be the only one on its database and schema; "
            "stop it first, or use the endpoints provisioner on every server "
            "(docs/deployment.md, 'Several servers')"
        )

    def close(self) -> None:
        """Give the lock up (closing its connection)."""
        if not self._connection.closed:
            self._connection.close()
