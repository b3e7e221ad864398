"""What the MCP server offers beside its tools, and how it says no: the
prompts, the concrete resources resources/list lists, and argument errors
one sentence per problem. Through `mcp.Client`, in memory and over stdio."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, TextContent

from allocation_ledger.adapters.storage.service import AllocationService
from tests.mcp_support import call, call_error, stdio_params
from tests.test_mcp_tools import HUGE, MALFORMED

pytestmark = pytest.mark.anyio

PYDANTIC_REPORT = re.compile(
    r"validation error|errors\.pydantic\.dev|\[type=|input_value=|Arguments\b"
)


# -- argument errors -------------------------------------------------------------


async def test_an_argument_out_of_range_reads_as_one_sentence(client: Client) -> None:
    text = await call_error(client, "set_capacity", {"workers": 5000})
    assert text == (
        "Error executing tool set_capacity: workers: must be at most 1000, got 5000"
    )


async def test_each_problem_is_one_sentence(client: Client) -> None:
    text = await call_error(
        client,
        "request_resources",
        {"mcp_servers": ["github", "Bad Name"], "workers": "4", "worker": 4},
    )
    prefix = "Error executing tool request_resources: "
    assert text.startswith(prefix)
    assert sorted(text.removeprefix(prefix).split("; ")) == [
        "job_id: required (missing)",
        "mcp_servers[1]: must match the pattern ^[a-z0-9][a-z0-9._-]{0,62}$, "
        'got "Bad Name"',
        "worker: not an argument of this tool (did you mean workers?)",
        'workers: must be a whole number, got "4"',
    ]


async def test_no_malformed_call_gets_a_pydantic_report(
    client: Client, service: AllocationService
) -> None:
    for tool, arguments, expected in MALFORMED:
        text = await call_error(client, tool, arguments)
        shown = {k: (v if v is not HUGE else "<huge>") for k, v in arguments.items()}
        assert expected in text, f"{tool}({shown}): {text[:300]}"
        assert not PYDANTIC_REPORT.search(text), f"{tool}({shown}): {text[:300]}"
        assert "\n" not in text, f"{tool}({shown}): {text[:300]}"
        assert len(text) < 400, f"{tool}({shown}) echoes too much"


async def test_a_value_error_is_said_once_without_repeating_the_argument(
    client: Client,
) -> None:
    text = await call_error(client, "set_capacity", {"cpu": 2.0005})
    assert text == (
        "Error executing tool set_capacity: cpu: 2.0005 is finer than a "
        "millicore; give cores with at most 3 decimal places (e.g. 0.5 or 2.125)"
    )
    text = await call_error(client, "set_scheduling", {"preemption": {"urgent": []}})
    assert text == (
        'Error executing tool set_scheduling: preemption key "urgent": must be '
        "'low', 'normal', 'high' or 'critical', got \"urgent\""
    )


# -- resources -------------------------------------------------------------------


async def test_resources_list_each_pool_and_the_callers_unfinished_allocations(
    client: Client, service: AllocationService
) -> None:
    service.ledger.create_pool("big")
    active = await call(
        client, "request_resources", job_id="a", mcp_servers=[], workers=9
    )
    queued = await call(
        client,
        "request_resources",
        job_id="b",
        mcp_servers=[],
        workers=5,
        wait=True,
    )
    assert queued["status"] == "queued"
    done = await call(
        client, "request_resources", job_id="c", mcp_servers=[], pool="big"
    )
    await call(client, "release_resources", allocation_id=done["allocation_id"])
    refused = await call(
        client, "request_resources", job_id="d", mcp_servers=[], workers=50
    )
    assert refused["status"] == "failed"

    listed = (await client.list_resources()).resources
    assert [str(r.uri) for r in listed] == [
        "ledger://pools/default/capacity",
        "ledger://pools/big/capacity",
        f"ledger://allocations/{active['allocation_id']}",
        f"ledger://allocations/{queued['allocation_id']}",
    ]
    assert all(r.mime_type == "application/json" for r in listed)
    assert listed[3].title == f"Allocation {queued['allocation_id']} of job b (queued)"
    for resource in listed:
        read = await client.read_resource(str(resource.uri))
        [content] = read.contents
        assert isinstance(content.text, str)  # type: ignore[union-attr]
        assert json.loads(content.text)  # type: ignore[union-attr]
    big = await client.read_resource("ledger://pools/big/capacity")
    assert json.loads(big.contents[0].text)["pool"] == "big"  # type: ignore[union-attr]


# -- prompts ---------------------------------------------------------------------


def _text(result: object) -> str:
    messages = result.messages  # type: ignore[attr-defined]
    assert len(messages) == 1
    content = messages[0].content
    assert isinstance(content, TextContent)
    return content.text


async def test_the_prompts_are_listed_with_their_arguments(client: Client) -> None:
    prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert set(prompts) == {"size_request", "explain_refusal"}
    size = {a.name: a for a in prompts["size_request"].arguments or []}
    assert size["task"].required and not size["pool"].required
    assert size["task"].description
    [allocation] = prompts["explain_refusal"].arguments or []
    assert allocation.name == "allocation_id" and allocation.required


async def test_size_request_brings_the_pools_figures_now(client: Client) -> None:
    await call(client, "set_capacity", workers=6, cpu=12)
    await call(
        client, "request_resources", job_id="a", mcp_servers=["github"], workers=2
    )
    text = _text(
        await client.get_prompt("size_request", {"task": "review 40 pull requests"})
    )
    assert "review 40 pull requests" in text
    assert '"available_workers": 4' in text
    assert '"available_cpu": 10.0' in text
    assert '"worker_size": {' in text
    assert "Servers already up in the pool: github." in text
    assert "dry_run=true" in text and "request_id" in text


async def test_explain_refusal_brings_the_recorded_reason(client: Client) -> None:
    refused = await call(
        client, "request_resources", job_id="a", mcp_servers=[], workers=11
    )
    text = _text(
        await client.get_prompt(
            "explain_refusal", {"allocation_id": refused["allocation_id"]}
        )
    )
    assert refused["allocation_id"] in text
    assert "Insufficient workers: requested 11, available 10" in text
    assert '"code": "insufficient_capacity"' in text
    assert '"total_workers": 10' in text
    assert "'exceeds_pool'" in text  # what each reason code means


@pytest.mark.parametrize(
    ("name", "arguments", "said"),
    [
        ("no_such_prompt", {}, "unknown prompt 'no_such_prompt'; the prompts are: "),
        ("explain_refusal", {}, "allocation_id: required (missing)"),
        (
            "explain_refusal",
            {"allocation_id": "alloc-nope"},
            "allocation_id: must match the pattern ^alloc-[0-9a-f]{12}$, "
            'got "alloc-nope"',
        ),
        (
            "explain_refusal",
            {"allocation_id": "alloc-000000000000"},
            "allocation 'alloc-000000000000' not found",
        ),
        (
            "size_request",
            {"task": "x", "pool": "elsewhere"},
            "pool 'elsewhere' not found",
        ),
    ],
)
async def test_a_bad_prompt_request_is_an_invalid_params_error_that_says_why(
    client: Client, name: str, arguments: dict[str, str], said: str
) -> None:
    with pytest.raises(MCPError) as raised:
        await client.get_prompt(name, arguments)
    assert raised.value.error.code == INVALID_PARAMS
    assert said in raised.value.error.message


# -- over stdio --------------------------------------------------------------------


async def test_over_stdio_prompts_resources_and_errors_read_the_same(
    tmp_path: Path,
) -> None:
    async with Client(stdio_params(tmp_path / "ledger.db")) as client:
        assert client.server_capabilities.prompts is not None
        made = await call(client, "request_resources", job_id="a", mcp_servers=[])
        uris = [str(r.uri) for r in (await client.list_resources()).resources]
        assert uris == [
            "ledger://pools/default/capacity",
            f"ledger://allocations/{made['allocation_id']}",
        ]
        text = await call_error(client, "set_capacity", {"workers": 5000})
        assert text.endswith("workers: must be at most 1000, got 5000")
        with pytest.raises(MCPError) as raised:
            await client.get_prompt("nope", {})
        assert raised.value.error.code == INVALID_PARAMS
