"""Request ids written before they belonged to tenants keep working.

`fixtures/request-id-ledger.db` was written by the ledger before this change
(see `fixtures/write_request_id_ledger.py`; never regenerate it): then an
allocation's id was derived from `(pool, request_id)` alone, and a token's
requests recorded its subject as their tenant. A copy is served over HTTP
with the tokens of that time, and over stdio: each tenant's retries still
find its own allocations, and only those.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from allocation_ledger.domain.allocation_ids import (
    allocation_id_for_request,
    pre_tenant_allocation_id,
)
from tests.mcp_support import (
    call,
    call_error,
    http_client,
    http_server_process,
    stdio_params,
    text_of,
)

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEDGER = FIXTURES / "request-id-ledger.db"
MADE: dict[str, dict[str, str]] = json.loads(
    (FIXTURES / "request-id-ledger.json").read_text()
)
TTL_SECONDS = 30 * 24 * 3600  # as the fixture asked
ALICE = "alice-token-of-old-0123456789"
BOB = "bob-token-of-old-0123456789"
TOKENS = [
    {"subject": "alice", "scopes": ["write"], "token": ALICE},
    {"subject": "bob", "scopes": ["write"], "token": BOB},
]


def the_request(job_id: str, request_id: str, **more: Any) -> dict[str, Any]:
    """request_resources' arguments for the request the fixture made."""
    return {
        "job_id": job_id,
        "mcp_servers": [],
        "workers": 1,
        "ttl_seconds": TTL_SECONDS,
        "request_id": request_id,
        **more,
    }


@pytest.fixture
def ledger_copy(tmp_path: Path) -> Iterator[Path]:
    """A copy of the fixture; the committed file stays as it was written."""
    before = LEDGER.read_bytes()
    copy = tmp_path / "ledger.db"
    shutil.copyfile(LEDGER, copy)
    yield copy
    assert LEDGER.read_bytes() == before


def test_the_fixture_holds_ids_derived_the_old_way() -> None:
    """What the tests start from: ids from (pool, request_id), whoever asked,
    which the derivation of today never gives."""
    for who, request_id in (("alice", "nightly-1"), ("bob", "nightly-9")):
        recorded = MADE[who][request_id]
        assert recorded == pre_tenant_allocation_id("default", request_id)
        assert recorded != allocation_id_for_request("default", request_id, who)
    assert MADE["local"]["nightly-2"] == pre_tenant_allocation_id(
        "default", "nightly-2"
    )


async def test_each_tenants_retries_find_its_own_old_allocations_over_http(
    ledger_copy: Path,
) -> None:
    alices = MADE["alice"]["nightly-1"]
    with http_server_process(
        ledger_copy, ALLOCATION_LEDGER_TOKENS=json.dumps(TOKENS)
    ) as (base, _):
        url = base + "/mcp"
        async with http_client(url, ALICE) as alice, http_client(url, BOB) as bob:
            # The read models were rebuilt on the new layout: listings by tenant.
            mine = await call(alice, "list_allocations")
            assert {a["allocation_id"] for a in mine["allocations"]} == {
                alices,
                MADE["alice"]["alice-adhoc"],
            }
            retried = await call(
                alice, "request_resources", **the_request("alice-nightly", "nightly-1")
            )
            assert (retried["replayed"], retried["allocation_id"]) == (True, alices)
            changed = await call_error(
                alice,
                "request_resources",
                the_request("alice-nightly", "nightly-1", workers=2),
            )
            assert f"already used for allocation {alices}" in changed

            # Bob's own old request id is his; alice's is not, to him.
            his = await call(
                bob, "request_resources", **the_request("bob-nightly", "nightly-9")
            )
            assert (his["replayed"], his["allocation_id"]) == (
                True,
                MADE["bob"]["nightly-9"],
            )
            same_key = await call(
                bob, "request_resources", **the_request("alice-nightly", "nightly-1")
            )
            assert same_key["replayed"] is False
            assert same_key["allocation_id"] not in {alices, MADE["bob"]["nightly-9"]}
            assert same_key["allocation_id"] == allocation_id_for_request(
                "default", "nightly-1", "bob"
            )
            hidden = await bob.call_tool("get_allocation", {"allocation_id": alices})
            assert hidden.is_error
            assert text_of(hidden).endswith(f"allocation '{alices}' not found")
            theirs = await call(bob, "list_allocations")
            assert alices not in {a["allocation_id"] for a in theirs["allocations"]}

            # Alice's old allocation is untouched by all that.
            kept = await call(alice, "get_allocation", allocation_id=alices)
            assert kept["tenant"] == "alice"

        # The local caller's old request id is its own (no tenant), and a
        # request id it never used is new for it, whoever used it before.
        async with Client(stdio_params(ledger_copy)) as local:
            again = await call(
                local, "request_resources", **the_request("local-nightly", "nightly-2")
            )
            assert (again["replayed"], again["allocation_id"]) == (
                True,
                MADE["local"]["nightly-2"],
            )
            fresh = await call(
                local, "request_resources", **the_request("alice-nightly", "nightly-1")
            )
            assert fresh["replayed"] is False
            assert fresh["allocation_id"] != alices
            as_alice = await call(
                local,
                "request_resources",
                **the_request("alice-nightly", "nightly-1", tenant="alice"),
            )
            assert (as_alice["replayed"], as_alice["allocation_id"]) == (True, alices)
