"""A configured token that no HTTP client could present (a space at either
end, which HTTP drops from a header; a character outside ASCII, which a
header cannot carry; a control character) stops the server at start, one
line naming the entry, instead of a server whose agent is refused `401`
forever with nothing said (docs/deployment.md, "Tokens and tenants")."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest

from tests.cli_support import one_line_error, run_cli
from tests.mcp_support import http_server_process

pytestmark = pytest.mark.slow

PROBLEM = (
    "token must be printable ASCII with no space at either end: an HTTP "
    "client can send nothing else in the Authorization header, so no client "
    "could present this one"
)
UNSENDABLE = {
    "trailing space": "agent-secret-0123456789 ",
    "leading space": " agent-secret-0123456789",
    "outside ASCII": "agent-sécret-0123456789",
    "tab": "agent-secret\t0123456789",
}


@pytest.mark.parametrize("kind", sorted(UNSENDABLE))
@pytest.mark.parametrize("where", ["file", "variable"])
def test_a_token_no_client_could_present_stops_the_server_naming_its_entry(
    tmp_path: Path, kind: str, where: str
) -> None:
    secret = UNSENDABLE[kind]
    entries = [
        {"subject": "fine", "scopes": ["read"], "token": "fine-token-0123456789"},
        {"subject": "agent-7", "scopes": ["write"], "token": secret},
    ]
    database = tmp_path / "ledger.db"
    if where == "file":
        tokens = tmp_path / "tokens.json"
        tokens.write_text(json.dumps(entries, ensure_ascii=False))
        settings = {"TOKENS_FILE": str(tokens)}
        expected = f"tokens file {tokens} is not a JSON list of tokens: [1]: {PROBLEM}"
    else:
        settings = {"TOKENS": json.dumps(entries)}
        expected = f"ALLOCATION_LEDGER_TOKENS[1]: {PROBLEM}"

    completed = run_cli(
        "serve",
        "--transport",
        "http",
        cwd=tmp_path,
        timeout=30,  # before the fix, it served (and would never end)
        env=settings,
        DATABASE=str(database),
    )

    line = one_line_error(completed, 2)
    assert expected in line
    assert secret.strip() not in line
    assert not database.exists()


def test_a_token_with_spaces_inside_is_presented_and_served(tmp_path: Path) -> None:
    """Spaces inside a token travel in the header: such tokens keep working."""
    token = "three word secret 0123456789"
    entries = [{"subject": "agent-7", "scopes": ["read"], "token": token}]
    with http_server_process(
        tmp_path / "ledger.db", ALLOCATION_LEDGER_TOKENS=json.dumps(entries)
    ) as (base, _):
        initialize = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        }
        headers = {"Accept": "application/json, text/event-stream"}
        answered = httpx2.post(
            base + "/mcp",
            json=initialize,
            headers={**headers, "Authorization": f"Bearer {token}"},
        )
        refused = httpx2.post(
            base + "/mcp",
            json=initialize,
            headers={**headers, "Authorization": "Bearer three word"},
        )
    assert answered.status_code == 200, answered.text
    assert refused.status_code == 401
