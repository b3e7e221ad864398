"""A SQLite file that cannot be written while the server runs.

The server process is denied every write, as on a full disk: its file size
limit is lowered to one byte while it runs (RLIMIT_FSIZE; Python ignores
the SIGXFSZ that comes with it, so each write fails with EFBIG). Unlike a
read-only mode on the file, which stops neither root nor a file already
open, this holds for any user, and it is lifted as easily.

What must hold: a command that cannot be saved fails with the cause named
and nothing written; once the file can be written again, the server works
again by itself.
"""

from __future__ import annotations

import resource
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest

from tests.mcp_support import call, http_client, http_server_process, text_of

pytestmark = pytest.mark.anyio

PATIENCE = 30


@contextmanager
def writes_denied(process_id: int) -> Iterator[None]:
    """No write of the process succeeds until the block ends."""
    soft, hard = resource.prlimit(process_id, resource.RLIMIT_FSIZE)
    resource.prlimit(process_id, resource.RLIMIT_FSIZE, (1, hard))
    try:
        yield
    finally:
        resource.prlimit(process_id, resource.RLIMIT_FSIZE, (soft, hard))


def last_position(database: Path) -> int:
    """The position of the last event in the file, read without writing."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        row = connection.execute("SELECT MAX(rowid) FROM stored_events").fetchone()
    finally:
        connection.close()
    return int(row[0] or 0)


async def test_commands_on_an_unwritable_file_fail_naming_it_and_write_nothing(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    with http_server_process(database, "--no-auth") as (base, process):
        async with http_client(base + "/mcp") as client:
            held = await call(
                client, "request_resources", job_id="job-a", mcp_servers=[], workers=1
            )
            before = last_position(database)
            with writes_denied(process.pid):
                for name, arguments in (
                    (
                        "request_resources",
                        {
                            "job_id": "job-b",
                            "mcp_servers": [],
                            "workers": 2,
                            "request_id": "req-b",
                        },
                    ),
                    ("release_resources", {"allocation_id": held["allocation_id"]}),
                    ("set_capacity", {"workers": 12}),
                ):
                    with anyio.fail_after(PATIENCE):
                        reply = await client.call_tool(name, arguments)
                    assert reply.is_error, text_of(reply)
                    text = text_of(reply)
                    assert "the ledger's database cannot be written" in text, text
                    assert "Nothing was written" in text, text
                    assert last_position(database) == before

            made = await call(
                client,
                "request_resources",
                job_id="job-b",
                mcp_servers=[],
                workers=2,
                request_id="req-b",
            )
            assert made["status"] == "active"
            assert made["replayed"] is False  # the failed try wrote nothing
            seen = await call(
                client, "get_allocation", allocation_id=held["allocation_id"]
            )
            assert seen["state"] == "active"  # its release was not saved
            capacity = await call(client, "get_capacity")
            assert capacity["allocated_workers"] == 3
            assert capacity["total_workers"] == 10
