"""The HTTP edge under abuse, on real servers: requests addressed to another
host (DNS rebinding), one token opening sessions without end, a request
megabytes long, and `--no-auth` away from loopback."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from allocation_ledger.adapters.cli import main
from tests.mcp_support import (
    call,
    http_client,
    http_server_process,
    max_notification_id,
    raw_tool_call,
    served_over_http,
    server_env,
    sqlite_service,
)

pytestmark = pytest.mark.anyio

DASHBOARD = "dashboard-token-0123456789"
AGENT = "agent-token-0123456789"
AUDITOR = "auditor-token-0123456789"
CRAWLER = "crawler-token-0123456789"
PROBER = "prober-token-0123456789"
TOKENS = [
    {"subject": "dashboard", "scopes": ["read"], "token": DASHBOARD},
    {"subject": "agent-7", "scopes": ["write"], "token": AGENT},
    {"subject": "auditor", "scopes": ["read"], "token": AUDITOR},
    {"subject": "crawler", "scopes": ["read"], "token": CRAWLER},
    {"subject": "prober", "scopes": ["read"], "token": PROBER},
]
SESSIONS_PER_TOKEN = 3
PUBLIC_NAME = "ledger.example.com"
PROTOCOL = "2025-06-18"
MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": PROTOCOL,
        "capabilities": {},
        "clientInfo": {"name": "edge-test", "version": "0"},
    },
}


class Served:
    """A server bound to 127.0.0.2, where the Host check used to be off."""

    def __init__(self, base: str, database: Path, log: Path) -> None:
        self.base = base
        self.url = base + "/mcp"
        self.database = database
        self.log = log
        self.own_host = base.removeprefix("http://")

    def written(self) -> int:
        with sqlite_service(self.database) as service:
            return max_notification_id(service)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("edge")
    database = directory / "ledger.db"
    log = directory / "server.log"
    with (
        log.open("wb") as stderr,
        served_over_http(
            database,
            ["--host", "127.0.0.2"],
            {
                "ALLOCATION_LEDGER_TOKENS": json.dumps(TOKENS),
                "ALLOCATION_LEDGER_LOG_LEVEL": "INFO",
                "ALLOCATION_LEDGER_HTTP_ALLOWED_HOSTS": PUBLIC_NAME,
                "ALLOCATION_LEDGER_HTTP_ALLOWED_ORIGINS": f"https://{PUBLIC_NAME}",
                "ALLOCATION_LEDGER_HTTP_SESSIONS_PER_TOKEN": str(SESSIONS_PER_TOKEN),
            },
            stderr=stderr,
        ) as (base, _),
    ):
        yield Served(base, database, log)


def _headers(token: str, **extra: str) -> dict[str, str]:
    return {**MCP_ACCEPT, "Authorization": f"Bearer {token}", **extra}


def _in_session(token: str, session_id: str) -> dict[str, str]:
    return _headers(token, **{"Mcp-Session-Id": session_id})


def _session_headers(token: str, session_id: str) -> dict[str, str]:
    return {**_in_session(token, session_id), "Mcp-Protocol-Version": PROTOCOL}


# -- 3. Host and Origin, whatever the bind address ------------------------------


async def test_requests_addressed_to_another_host_are_refused_and_change_nothing(
    served: Served,
) -> None:
    before = served.written()
    rebound = httpx2.post(
        served.url,
        json=INITIALIZE,
        headers=_headers(AGENT, Host="evil.example", Origin="http://evil.example"),
    )
    assert rebound.status_code == 421
    foreign_page = httpx2.post(
        served.url,
        json=INITIALIZE,
        headers=_headers(AGENT, Origin="http://evil.example"),
    )
    assert foreign_page.status_code == 403
    # A full client, as a browser tricked by DNS rebinding would send it.
    with pytest.raises(Exception):  # noqa: B017 - any failure; none allocates
        async with (
            httpx2.AsyncClient(
                headers={
                    "Authorization": f"Bearer {AGENT}",
                    "Host": "evil.example",
                    "Origin": "http://evil.example",
                },
                timeout=30,
            ) as http,
            _client(served.url, http) as client,
        ):
            await client.call_tool(
                "request_resources",
                {"job_id": "rebound", "mcp_servers": [], "workers": 1},
            )
    assert served.written() == before

    # The bind address and the loopback names are always accepted.
    own = httpx2.post(
        served.url, json=INITIALIZE, headers=_headers(AGENT, Host=served.own_host)
    )
    assert own.status_code == 200
    # A load balancer's health check needs no particular Host.
    health = httpx2.get(served.base + "/healthz", headers={"Host": "10.1.2.3"})
    assert health.status_code == 200


async def test_the_host_is_checked_first_on_every_path_but_the_health_check(
    served: Served,
) -> None:
    foreign = {"Host": "evil.example"}
    # Before authentication: a rebound request without a token is told 421,
    # not 401, so it learns nothing of how the ledger authenticates.
    anonymous = httpx2.post(
        served.url, json=INITIALIZE, headers={**MCP_ACCEPT, **foreign}
    )
    assert anonymous.status_code == 421
    # Before the SDK's redirect of /mcp/ to /mcp.
    slash = httpx2.post(
        served.url + "/", json=INITIALIZE, headers=_headers(AGENT, **foreign)
    )
    assert slash.status_code == 421
    # The metrics, with or without a token.
    assert httpx2.get(served.base + "/metrics", headers=foreign).status_code == 421
    metrics = httpx2.get(
        served.base + "/metrics",
        headers={"Authorization": f"Bearer {DASHBOARD}", **foreign},
    )
    assert metrics.status_code == 421
    assert (
        httpx2.get(
            served.base + "/metrics",
            headers={
                "Authorization": f"Bearer {DASHBOARD}",
                "Origin": "http://evil.example",
            },
        ).status_code
        == 403
    )
    # Addressed to the ledger itself, the same requests are served as before.
    assert (
        httpx2.post(served.url, json=INITIALIZE, headers=MCP_ACCEPT).status_code == 401
    )
    own_metrics = httpx2.get(
        served.base + "/metrics", headers={"Authorization": f"Bearer {DASHBOARD}"}
    )
    assert own_metrics.status_code == 200


async def test_a_reverse_proxy_keeping_its_public_name_is_served(
    tmp_path: Path,
) -> None:
    """On 127.0.0.1, where the Host check was always on and could not be told
    about a proxy's name; here with the flags rather than the settings."""
    with http_server_process(
        tmp_path / "ledger.db",
        "--allowed-host",
        PUBLIC_NAME,
        "--allowed-origin",
        f"https://{PUBLIC_NAME}",
        ALLOCATION_LEDGER_TOKENS=json.dumps(TOKENS),
    ) as (base, _):
        for host in (PUBLIC_NAME, f"{PUBLIC_NAME}:443"):
            async with (
                httpx2.AsyncClient(
                    headers={
                        "Authorization": f"Bearer {AGENT}",
                        "Host": host,
                        "Origin": f"https://{PUBLIC_NAME}",
                    },
                    timeout=30,
                ) as http,
                _client(base + "/mcp", http) as client,
            ):
                granted = await call(
                    client, "request_resources", job_id="proxied", mcp_servers=[]
                )
                assert granted["status"] == "active"
        elsewhere = httpx2.post(
            base + "/mcp",
            json=INITIALIZE,
            headers=_headers(AGENT, Host="elsewhere.example.com"),
        )
        assert elsewhere.status_code == 421


def _client(url: str, http: httpx2.AsyncClient) -> Client:
    return Client(streamable_http_client(url, http_client=http))


# -- 4. sessions per token ------------------------------------------------------


async def _open_sessions(url: str, token: str, attempts: int) -> list[httpx2.Response]:
    async with httpx2.AsyncClient(timeout=30) as http:
        return list(
            await asyncio.gather(
                *(
                    http.post(url, json=INITIALIZE, headers=_headers(token))
                    for _ in range(attempts)
                )
            )
        )


async def test_one_token_holds_at_most_its_sessions_and_others_carry_on(
    served: Served,
) -> None:
    answers = await _open_sessions(served.url, DASHBOARD, 12)
    opened = [a.headers["mcp-session-id"] for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code != 200]
    assert len(opened) == SESSIONS_PER_TOKEN
    assert {a.status_code for a in refused} == {429}
    error = refused[0].json()
    assert error["id"] is None
    assert "too many open MCP sessions" in error["error"]["message"]
    assert "'dashboard'" in error["error"]["message"]
    assert "retry-after" in refused[0].headers
    assert "mcp-session-id" not in refused[0].headers

    # Other tokens are served meanwhile: a new session, and a full client.
    other = httpx2.post(served.url, json=INITIALIZE, headers=_headers(AUDITOR))
    assert other.status_code == 200
    async with http_client(served.url, AGENT) as client:
        assert (await call(client, "get_capacity"))["total_workers"] >= 1

    # The sessions it holds keep working.
    used = httpx2.post(
        served.url,
        json=raw_tool_call("get_capacity", {}),
        headers=_session_headers(DASHBOARD, opened[0]),
    )
    assert used.status_code == 200
    # Ending one makes room for one.
    ended = httpx2.delete(served.url, headers=_session_headers(DASHBOARD, opened[0]))
    assert ended.status_code == 200
    again = await _open_sessions(served.url, DASHBOARD, 3)
    assert sorted(a.status_code for a in again) == [200, 429, 429]
    # Eleven refusals, and the log says so once (once a minute at most).
    said = served.log.read_text().count("refused a new MCP session to the token of")
    assert 1 <= said <= 2


async def test_at_its_limit_a_token_is_refused_only_what_would_open_a_session(
    served: Served,
) -> None:
    """A request without a session that is not an initialize opens none: at
    the limit it gets the SDK's answer for a missing session, not 429 (which
    would send a client looking at its sessions rather than its bug)."""
    token = PROBER
    answers = await _open_sessions(served.url, token, SESSIONS_PER_TOKEN)
    assert [a.status_code for a in answers] == [200] * SESSIONS_PER_TOKEN
    initialize = httpx2.post(served.url, json=INITIALIZE, headers=_headers(token))
    assert initialize.status_code == 429
    stray = httpx2.post(
        served.url,
        json=raw_tool_call("get_capacity", {}),
        headers=_headers(token, **{"Mcp-Protocol-Version": PROTOCOL}),
    )
    assert stray.status_code == 400, stray.text
    assert "session" in stray.text.lower()
    # Padding an initialize does not get it past the limit.
    padded = {**INITIALIZE, "padding": "x" * 100_000}
    assert (
        httpx2.post(served.url, json=padded, headers=_headers(token)).status_code == 429
    )
    for answer in answers:
        httpx2.delete(
            served.url,
            headers=_in_session(token, answer.headers["mcp-session-id"]),
        )


def test_idle_sessions_expire_and_free_their_place(tmp_path: Path) -> None:
    idle = 2.0
    with http_server_process(
        tmp_path / "ledger.db",
        ALLOCATION_LEDGER_TOKENS=json.dumps(TOKENS),
        ALLOCATION_LEDGER_HTTP_SESSIONS_PER_TOKEN="2",
        ALLOCATION_LEDGER_HTTP_SESSION_IDLE_SECONDS=str(idle),
    ) as (base, _):
        url = base + "/mcp"
        started = time.monotonic()
        held = [
            httpx2.post(url, json=INITIALIZE, headers=_headers(CRAWLER))
            for _ in range(2)
        ]
        assert [a.status_code for a in held] == [200, 200]
        third = httpx2.post(url, json=INITIALIZE, headers=_headers(CRAWLER))
        if time.monotonic() - started < idle:  # neither could have expired yet
            assert third.status_code == 429
        deadline = time.monotonic() + 60
        while third.status_code != 200:
            assert third.status_code == 429
            assert time.monotonic() < deadline, "no idle session ever expired"
            time.sleep(0.2)
            third = httpx2.post(url, json=INITIALIZE, headers=_headers(CRAWLER))
        # The expired session is gone from the server, not only uncounted.
        expired = httpx2.post(
            url,
            json=raw_tool_call("get_capacity", {}),
            headers=_session_headers(CRAWLER, held[0].headers["mcp-session-id"]),
        )
        assert expired.status_code == 404


# -- 5. one request cannot stall the server or flood its log ------------------


async def test_a_four_megabyte_resource_uri_is_answered_without_stalling_anyone(
    served: Served,
) -> None:
    opened = httpx2.post(served.url, json=INITIALIZE, headers=_headers(CRAWLER))
    session = opened.headers["mcp-session-id"]
    log_before = served.log.stat().st_size
    uri = "ledger://allocations/" + "a" * (4 * 1024 * 1024 - 1024)
    body = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "resources/read",
        "params": {"uri": uri},
    }
    checks: list[int] = []
    done = asyncio.Event()

    async with httpx2.AsyncClient(timeout=10) as http:

        async def health_checks() -> None:
            while not done.is_set() or not checks:
                checks.append((await http.get(served.base + "/healthz")).status_code)
                await asyncio.sleep(0.01)

        async def huge() -> httpx2.Response:
            try:
                return await http.post(
                    served.url,
                    json=body,
                    headers=_session_headers(CRAWLER, session),
                    timeout=30,
                )
            finally:
                done.set()

        answered, _ = await asyncio.gather(huge(), health_checks())
    assert answered.status_code == 200
    reply = _json_rpc(answered)
    assert reply["id"] == 2
    assert "error" in reply
    assert checks and set(checks) == {200}

    # A Host header 8,000 characters long, refused, is logged short too.
    refused = httpx2.post(
        served.url, json=INITIALIZE, headers=_headers(CRAWLER, Host="h" * 8000)
    )
    assert refused.status_code in (400, 421, 431)

    written = served.log.read_bytes()[log_before:].decode(errors="replace")
    assert len(written) < 20_000, f"{len(written)} characters of log"
    assert written, "the server logs at INFO: something was written"
    longest = max(written.splitlines(), key=len)
    assert len(longest) < 1_000, longest[:300]
    assert "more characters)" in written


def _json_rpc(response: httpx2.Response) -> dict[str, Any]:
    """The one JSON-RPC message of a reply, sent as JSON or as one SSE event."""
    if response.headers["content-type"].startswith("application/json"):
        return dict(response.json())
    data = [
        line.removeprefix("data:").strip()
        for line in response.text.splitlines()
        if line.startswith("data:") and line.strip() != "data:"
    ]
    return dict(json.loads(data[-1]))


# -- --no-auth away from loopback ---------------------------------------------


def _serve_until_it_fails(tmp_path: Path, *arguments: str) -> str:
    """`serve --transport http ARGUMENTS` on a ledger it cannot open (its
    SQLite file is a directory): what it says on stderr before giving up (it
    never listens)."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "allocation_ledger.adapters.cli",
            "serve",
            "--transport",
            "http",
            "--no-auth",
            *arguments,
        ],
        env=server_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr
    assert "serving MCP on" not in completed.stderr
    return completed.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "ledger.internal"])
def test_no_auth_away_from_loopback_prints_its_warning(
    tmp_path: Path, host: str
) -> None:
    said = _serve_until_it_fails(tmp_path, "--host", host)
    assert "WARNING allocation_ledger.serve: serving without authentication" in said
    if host == "ledger.internal":  # a name this machine does not resolve
        assert "'ledger.internal' is not an address of this machine" in said
    else:
        assert "is a directory, not a ledger file" in said


@pytest.mark.parametrize("host", ["127.0.0.2", "localhost", "::1"])
def test_no_auth_on_loopback_says_nothing(tmp_path: Path, host: str) -> None:
    assert "WARNING" not in _serve_until_it_fails(tmp_path, "--host", host)


def test_allowed_hosts_and_origins_that_are_no_such_thing_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALLOCATION_LEDGER_STORE", "memory")
    monkeypatch.delenv("ALLOCATION_LEDGER_CONFIG", raising=False)
    assert main(["serve", "--transport", "http", "--allowed-host", "http://x/"]) == 2
    assert "allowed host 'http://x/'" in capsys.readouterr().err
    assert (
        main(["serve", "--transport", "http", "--allowed-origin", "https://x/path"])
        == 2
    )
    assert "allowed origin 'https://x/path'" in capsys.readouterr().err
    monkeypatch.setenv("ALLOCATION_LEDGER_HTTP_ALLOWED_HOSTS", "a.example, b c")
    assert main(["serve", "--transport", "http"]) == 2
    assert "allowed host 'b c'" in capsys.readouterr().err
