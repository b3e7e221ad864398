"""get_capacity's `at` and `capacity --at` are a past moment (or now): one
after now is refused, naming now, instead of answering today's pool as if it
were the pool then (a lease that will have run out by then was shown held)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from allocation_ledger.domain.clock import ManualClock
from tests.cli_support import one_line_error, run_cli
from tests.mcp_support import call, call_error


@pytest.mark.anyio
async def test_a_moment_after_now_is_refused_naming_now(
    client: Client, clock: ManualClock
) -> None:
    made = await call(
        client,
        "request_resources",
        job_id="j",
        mcp_servers=[],
        workers=1,
        ttl_seconds=60,
    )
    clock.advance(30)
    now = clock.now().isoformat()

    error = await call_error(client, "get_capacity", {"at": "2099-01-01T00:00:00Z"})
    just_after = await call_error(
        client, "get_capacity", {"at": "2026-01-01T00:00:30.000001+00:00"}
    )

    assert error == (
        "Error executing tool get_capacity: at must be a past moment (or now), "
        "got 2099-01-01T00:00:00+00:00, after now (2026-01-01T00:00:30+00:00): "
        "what the pool will hold is not known; omit at for the pool now"
    )
    assert "after now (2026-01-01T00:00:30+00:00)" in just_after
    at_now = await call(client, "get_capacity", at=now)
    at_start = await call(client, "get_capacity", at=made["created_at"])
    assert at_now["allocated_workers"] == at_start["allocated_workers"] == 1


@pytest.mark.slow
def test_capacity_at_a_moment_after_now_is_a_usage_error(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.db")
    assert run_cli("init-db", cwd=tmp_path, DATABASE=database).returncode == 0

    completed = run_cli(
        "capacity", "--at", "2099-01-01T00:00:00Z", cwd=tmp_path, DATABASE=database
    )

    line = one_line_error(completed, 2)
    assert (
        "capacity: --at must be a past moment (or now), got "
        "2099-01-01T00:00:00+00:00, after now ("
    ) in line
    assert "`allocation-ledger status` shows it now" in line
    past = run_cli(
        "capacity", "--at", "2020-01-01T00:00:00Z", cwd=tmp_path, DATABASE=database
    )
    assert "after now" not in past.stderr
