"""A job id filter that no allocation can match (a letter outside ASCII, a
space at either end, nothing at all) is refused naming the rule, as
request_resources refuses it, instead of an empty answer that reads as
"that job held nothing" (list_allocations, get_usage, usage --job)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from tests.cli_support import run_cli
from tests.mcp_support import call, call_error

NO_SUCH_JOB_IDS = ["nightly-büild", "nightly-build ", " nightly-build", "夜間", ""]


@pytest.mark.anyio
@pytest.mark.parametrize("job_id", NO_SUCH_JOB_IDS)
@pytest.mark.parametrize("tool", ["list_allocations", "get_usage"])
async def test_a_job_id_no_allocation_can_have_is_refused_naming_the_rule(
    client: Client, tool: str, job_id: str
) -> None:
    await call(client, "request_resources", job_id="nightly-build", mcp_servers=[])
    refused = await call_error(
        client, "request_resources", {"job_id": job_id, "mcp_servers": []}
    )

    error = await call_error(client, tool, {"job_id": job_id})

    assert error.startswith(f"Error executing tool {tool}: job_id: must ")
    assert error.removeprefix(f"Error executing tool {tool}: ") == (
        refused.removeprefix("Error executing tool request_resources: ")
    )


@pytest.mark.anyio
async def test_a_job_id_as_requested_still_filters(client: Client) -> None:
    await call(client, "request_resources", job_id="nightly build 7", mcp_servers=[])
    await call(client, "request_resources", job_id="other", mcp_servers=[])

    listed = await call(client, "list_allocations", job_id="nightly build 7")
    usage = await call(client, "get_usage", job_id="nightly build 7")

    assert [a["job_id"] for a in listed["allocations"]] == ["nightly build 7"]
    assert [row["job_id"] for row in usage["usage"]] == ["nightly build 7"]


@pytest.mark.slow
def test_usage_job_refuses_a_job_id_no_allocation_can_have(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.db")
    assert run_cli("init-db", cwd=tmp_path, DATABASE=database).returncode == 0

    completed = run_cli(
        "usage", "--job", "nightly-build ", cwd=tmp_path, DATABASE=database
    )

    assert completed.returncode == 2, completed.stderr
    assert completed.stdout == ""
    assert (
        "argument --job: job_id 'nightly-build ' must be printable ASCII without "
        "leading or trailing spaces: no allocation has such a job id"
    ) in completed.stderr
    assert "Traceback" not in completed.stderr
    fine = run_cli("usage", "--job", "nightly-build", cwd=tmp_path, DATABASE=database)
    assert fine.returncode == 0, fine.stderr
