"""What the store outage tests share: a served ledger on PostgreSQL through a
TCP proxy that a test cuts (tests/tcp_proxy.py), and a way to look at the
database behind it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp_types import CallToolResult

from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
    open_service,
)
from tests.mcp_support import http_server_process, max_notification_id
from tests.postgres import DBNAME, HOST, PORT, USER, postgres_settings
from tests.tcp_proxy import CuttableProxy

STORE_TIMEOUT = 2
"""The configured wait of the servers under test, in seconds."""
PATIENCE = 30
"""How long a test waits for any one answer: far beyond what a server that
keeps its bounds takes (a few store timeouts), far below an outage's length
on a server that does not (it waited out the whole outage)."""
EVENT_STORE_CONNECTION = b"idle_in_transaction_session_timeout"
"""What only the event store's connections send when they open."""
READ_MODELS = b"ledger_view_position"
"""What a server sends when it reads or writes its read models."""
NOT_KNOWN = "was saved is not known"
NOTHING_WRITTEN = "Nothing was written"


@dataclass
class Outage:
    """A server on PostgreSQL through a proxy, and a way to look behind it."""

    proxy: CuttableProxy
    url: str
    direct: AllocationService
    """A service on the database itself (not through the proxy)."""

    def position(self) -> int:
        """The position of the last event in the log."""
        return max_notification_id(self.direct)

    def state_of(self, allocation_id: str) -> str:
        return self.direct.ledger.allocation(allocation_id).state.value

    def restore(self) -> None:
        if self.proxy.tripped.is_set():
            self.proxy.restore()


def proxied_env(schema: str, port: int) -> dict[str, str]:
    return {
        "ALLOCATION_LEDGER_STORE": "postgres",
        "ALLOCATION_LEDGER_POSTGRES_HOST": "127.0.0.1",
        "ALLOCATION_LEDGER_POSTGRES_PORT": str(port),
        "ALLOCATION_LEDGER_POSTGRES_USER": USER,
        "ALLOCATION_LEDGER_POSTGRES_DBNAME": DBNAME,
        "ALLOCATION_LEDGER_POSTGRES_SCHEMA": schema,
        "ALLOCATION_LEDGER_STORE_TIMEOUT_SECONDS": str(STORE_TIMEOUT),
    }


@pytest.fixture
def proxy() -> Iterator[CuttableProxy]:
    proxy = CuttableProxy((HOST, PORT))
    proxy.start()
    yield proxy
    proxy.close()


@pytest.fixture
def outage(
    postgres_schema: str, proxy: CuttableProxy, tmp_path: Path
) -> Iterator[Outage]:
    """A served ledger on PostgreSQL through `proxy`, with a fresh schema."""
    settings = postgres_settings(postgres_schema)
    init_database(settings)
    direct = open_service(settings)
    env = proxied_env(postgres_schema, proxy.port)
    try:
        with http_server_process(tmp_path / "unused.db", "--no-auth", **env) as (
            base,
            _,
        ):
            yield Outage(proxy, base, direct)
    finally:
        direct.close()


async def tool(client: Client, name: str, **arguments: Any) -> CallToolResult:
    """Call a tool, success or not, within PATIENCE."""
    with anyio.fail_after(PATIENCE):
        return await client.call_tool(name, arguments)


async def eventually(client: Client, name: str, **arguments: Any) -> dict[str, Any]:
    """The result of a tool once the server works again (within PATIENCE)."""
    with anyio.fail_after(PATIENCE):
        while True:
            reply = await client.call_tool(name, arguments)
            if not reply.is_error:
                assert reply.structured_content is not None
                return dict(reply.structured_content)
            await anyio.sleep(0.2)
