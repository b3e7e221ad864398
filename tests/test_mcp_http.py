"""The MCP server over streamable HTTP: a real server on a free loopback port,
with bearer tokens (from the environment and from a file), and without."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from allocation_ledger.adapters.cli import main
from tests.mcp_support import (
    call,
    call_error,
    http_client,
    http_server_process,
    max_notification_id,
    original_behaviours,
    raw_tool_call,
    sqlite_service,
)

pytestmark = pytest.mark.anyio

READER = "reader-token-0123456789"
WRITER = "writer-token-0123456789"
ADMIN = "admin-token-from-a-file-0123"
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One authenticated server for the module: its MCP URL and its SQLite file."""
    directory = tmp_path_factory.mktemp("http")
    database = directory / "ledger.db"
    tokens_file = directory / "tokens.json"
    tokens_file.write_text(
        json.dumps(
            [
                {
                    "subject": "ops-admin",
                    "scopes": ["admin"],
                    "token_sha256": hashlib.sha256(ADMIN.encode()).hexdigest(),
                }
            ]
        )
    )
    tokens = [
        # The dashboard reads the allocations of agent-7's tenant.
        {
            "subject": "dashboard",
            "scopes": ["read"],
            "token": READER,
            "tenant": "agent-7",
        },
        {"subject": "agent-7", "scopes": ["write"], "token": WRITER},
    ]
    with http_server_process(
        database,
        "--path",
        "/ledger/mcp",
        ALLOCATION_LEDGER_TOKENS=json.dumps(tokens),
        ALLOCATION_LEDGER_TOKENS_FILE=str(tokens_file),
    ) as (base, _):
        yield base + "/ledger/mcp", database


def _written(database: Path) -> int:
    with sqlite_service(database) as service:
        return max_notification_id(service)


def test_healthz_answers_without_a_token(served: tuple[str, Path]) -> None:
    url, _ = served
    health = httpx2.get(url.replace("/ledger/mcp", "/healthz"))
    assert health.status_code == 200
    body = health.json()
    assert body.keys() == {"status", "store", "last_position"}
    assert body["status"] == "ok"
    assert body["store"] == "sqlite"
    assert isinstance(body["last_position"], int)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-token-we-know-0000"},
        {"Authorization": f"Bearer {WRITER}x"},
        {"Authorization": f"Basic {WRITER}"},
        {"Authorization": WRITER},
    ],
    ids=["none", "unknown", "almost", "basic", "bare"],
)
def test_without_a_valid_token_it_is_401_and_nothing_is_touched(
    served: tuple[str, Path], headers: dict[str, str]
) -> None:
    url, database = served
    before = _written(database)
    body = raw_tool_call(
        "request_resources", {"job_id": "intruder", "mcp_servers": [], "workers": 1}
    )
    response = httpx2.post(url, json=body, headers={**MCP_ACCEPT, **headers})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"] == "invalid_token"
    assert _written(database) == before


async def test_the_original_behaviours_with_a_write_token(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    async with http_client(url, WRITER) as client:
        history = await original_behaviours(client)
    assert {e["actor"] for e in history["events"]} == {"agent-7"}


async def test_a_read_only_token_reads_but_cannot_write(
    served: tuple[str, Path],
) -> None:
    url, database = served
    async with http_client(url, WRITER) as writer:
        held = await call(
            writer, "request_resources", job_id="shared", mcp_servers=[], workers=1
        )
    allocation_id = held["allocation_id"]
    before = _written(database)
    async with http_client(url, READER) as reader:
        capacity = await call(reader, "get_capacity")
        assert capacity["allocated_workers"] >= 1
        detail = await call(reader, "get_allocation", allocation_id=allocation_id)
        assert detail["requested_by"] == "agent-7"
        await call(reader, "list_allocations", job_id="shared")
        await call(reader, "get_allocation_history", allocation_id=allocation_id)
        resource = await reader.read_resource(f"ledger://allocations/{allocation_id}")
        assert resource.contents
        for tool, arguments, scope in (
            ("request_resources", {"job_id": "r", "mcp_servers": []}, "write"),
            ("release_resources", {"allocation_id": allocation_id}, "write"),
            ("renew_allocation", {"allocation_id": allocation_id}, "write"),
            ("cleanup_expired", {}, "write"),
            ("set_capacity", {"workers": 100}, "admin"),
        ):
            text = await call_error(reader, tool, arguments)
            assert f"needs the '{scope}' scope" in text, tool
            assert "'dashboard'" in text
    assert _written(database) == before
    async with http_client(url, WRITER) as writer:
        released = await call(writer, "release_resources", allocation_id=allocation_id)
        assert released["status"] == "released"


async def test_only_an_admin_token_sets_capacity(served: tuple[str, Path]) -> None:
    url, database = served
    before = _written(database)
    async with http_client(url, WRITER) as writer:
        text = await call_error(writer, "set_capacity", {"workers": 12})
        assert "needs the 'admin' scope" in text
        assert "'agent-7'" in text
    assert _written(database) == before
    async with http_client(url, ADMIN) as admin:  # known by its SHA-256, from a file
        raised = await call(admin, "set_capacity", workers=12)
        assert raised["total_workers"] == 12
        lowered = await call(admin, "set_capacity", workers=10)
        assert lowered["changed"] is True
        granted = await call(
            admin, "request_resources", job_id="admin-job", mcp_servers=[]
        )  # admin includes write
        history = await call(
            admin, "get_allocation_history", allocation_id=granted["allocation_id"]
        )
        assert history["events"][0]["actor"] == "ops-admin"
        await call(admin, "release_resources", allocation_id=granted["allocation_id"])


def test_a_session_cannot_be_borrowed_with_another_token(
    served: tuple[str, Path],
) -> None:
    """A session opened with one token answers as if it did not exist to another."""
    url, database = served
    opened = httpx2.post(
        url,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-test", "version": "0"},
            },
        },
        headers={**MCP_ACCEPT, "Authorization": f"Bearer {READER}"},
    )
    assert opened.status_code == 200
    session_id = opened.headers["mcp-session-id"]
    before = _written(database)
    borrowed = httpx2.post(
        url,
        json=raw_tool_call(
            "request_resources", {"job_id": "borrowed", "mcp_servers": []}
        ),
        headers={
            **MCP_ACCEPT,
            "Authorization": f"Bearer {WRITER}",
            "Mcp-Session-Id": session_id,
            "Mcp-Protocol-Version": "2025-06-18",
        },
    )
    assert borrowed.status_code == 404
    assert _written(database) == before


async def test_no_auth_serves_anyone_and_records_them_as_anonymous(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    with http_server_process(database, "--no-auth") as (base, _):
        async with http_client(base + "/mcp") as client:
            granted = await call(
                client, "request_resources", job_id="open", mcp_servers=[], workers=1
            )
            history = await call(
                client, "get_allocation_history", allocation_id=granted["allocation_id"]
            )
            assert {e["actor"] for e in history["events"]} == {"anonymous"}
            capacity = await call(client, "set_capacity", workers=11)
            assert capacity["total_workers"] == 11


def test_http_without_tokens_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TOKENS", "TOKENS_FILE", "CONFIG"):
        monkeypatch.delenv(f"ALLOCATION_LEDGER_{name}", raising=False)
    monkeypatch.setenv("ALLOCATION_LEDGER_STORE", "memory")
    assert main(["serve", "--transport", "http", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "no bearer tokens are configured" in err
    assert "--no-auth" in err

    monkeypatch.setenv("ALLOCATION_LEDGER_TOKENS_FILE", str(tmp_path / "missing.json"))
    assert main(["serve", "--transport", "http"]) == 2
    assert "cannot read tokens file" in capsys.readouterr().err

    monkeypatch.delenv("ALLOCATION_LEDGER_TOKENS_FILE")
    monkeypatch.setenv(
        "ALLOCATION_LEDGER_TOKENS",
        json.dumps([{"subject": "system:me", "scopes": ["read"], "token": "x" * 20}]),
    )
    assert main(["serve", "--transport", "http"]) == 2
    assert "reserved" in capsys.readouterr().err
