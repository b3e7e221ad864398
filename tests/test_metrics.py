"""Prometheus metrics of real servers: /metrics over HTTP (with and without
tokens), `serve --metrics-port` beside a stdio server, two servers on one
PostgreSQL ledger, and the counters the ledger's work moves.

Every scrape is read with prometheus_client's own text parser, and pool
figures are checked against what get_capacity answers.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client, StdioServerParameters
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.mcp.ledger_server import LedgerServer
from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.mcp.tools.specs import TOOLS
from allocation_ledger.adapters.metrics.instruments import LedgerMetrics
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
    open_service,
)
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import PoolNotFoundError
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from tests.ledger_support import OpenService, RecordingProvisioner
from tests.mcp_support import (
    REPO,
    call,
    call_error,
    free_port,
    http_client,
    http_server_process,
    max_notification_id,
    server_env,
    sqlite_service,
)
from tests.metrics_support import (
    capacity_figures,
    parse,
    pool_figures,
    scrape,
    value,
)
from tests.postgres import postgres_schema, postgres_settings
from tests.test_scale_out import postgres_env

__all__ = ["postgres_schema"]

pytestmark = pytest.mark.anyio

CATALOG = """\
[pools.big]
cpu = 64
memory = 65536
workers = 32
"""
READER = "reader-token-0123456789"


def catalog_file(directory: Path) -> str:
    path = directory / "ledger.toml"
    path.write_text(CATALOG)
    return str(path)


async def a_few_commands(client: Client) -> dict[str, Any]:
    """Grant, refuse, queue, renew, release (twice) and a malformed call;
    what was done, to check the counters against."""
    granted = await call(
        client, "request_resources", job_id="a", mcp_servers=["github"], workers=3
    )
    await call(
        client, "request_resources", job_id="b", mcp_servers=["search"], pool="big"
    )
    await call(
        client, "request_resources", job_id="c", mcp_servers=[], workers=2, pool="big"
    )
    refused = await call(
        client, "request_resources", job_id="d", mcp_servers=[], workers=8
    )
    assert refused["reason"]["code"] == "insufficient_capacity"
    queued = await call(
        client, "request_resources", job_id="e", mcp_servers=[], workers=8, wait=True
    )
    assert queued["status"] == "queued"
    await call(
        client, "request_resources", job_id="f", mcp_servers=[], workers=1, dry_run=True
    )
    await call(client, "renew_allocation", allocation_id=granted["allocation_id"])
    released = await call(
        client, "release_resources", allocation_id=granted["allocation_id"]
    )
    assert released["status"] == "released"  # the queued request is granted now
    again = await call(
        client, "release_resources", allocation_id=granted["allocation_id"]
    )
    assert again["status"] == "already_released"
    await call_error(client, "set_capacity", {"workers": 5000})
    return {"requests": 6}


def check_pools_against_capacity(
    samples: dict[Any, float], capacities: dict[str, dict[str, Any]]
) -> None:
    for pool, capacity in capacities.items():
        assert pool_figures(samples, pool) == capacity_figures(capacity), pool
        assert value(samples, "allocation_ledger_queue_length", pool=pool) == float(
            capacity["queue_length"]
        )
        statuses = [server["status"] for server in capacity["mcp_servers"]]
        for status in ("running", "idle"):
            assert value(
                samples, "allocation_ledger_mcp_servers", pool=pool, status=status
            ) == float(statuses.count(status))


async def test_the_http_server_serves_metrics_that_agree_with_get_capacity(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    config = catalog_file(tmp_path)
    with http_server_process(
        database, "--no-auth", ALLOCATION_LEDGER_CONFIG=config
    ) as (base, _):
        async with http_client(base + "/mcp") as client:
            await a_few_commands(client)
            capacities = {
                pool: await call(client, "get_capacity", pool=pool)
                for pool in ("default", "big")
            }
            live = {
                (pool, state): (
                    await call(client, "list_allocations", pool=pool, state=state)
                )["count"]
                for pool in ("default", "big")
                for state in ("queued", "pending", "active", "releasing")
            }
        samples = scrape(base + "/metrics")
        with sqlite_service(database) as outside:
            head = max_notification_id(outside)

    assert value(samples, "allocation_ledger_store_up") == 1
    check_pools_against_capacity(samples, capacities)
    assert capacities["default"]["allocated_workers"] == 8  # the queued one, granted
    for (pool, state), count in live.items():
        assert value(
            samples, "allocation_ledger_allocations", pool=pool, state=state
        ) == float(count), (pool, state)
    assert (
        value(samples, "allocation_ledger_allocations", pool="big", state="active") == 2
    )

    requests = "allocation_ledger_requests_total"
    assert value(samples, requests, pool="default", outcome="granted", code="") == 1
    assert value(samples, requests, pool="big", outcome="granted", code="") == 2
    assert (
        value(
            samples,
            requests,
            pool="default",
            outcome="refused",
            code="insufficient_capacity",
        )
        == 1
    )
    assert (
        value(
            samples,
            requests,
            pool="default",
            outcome="queued",
            code="insufficient_capacity",
        )
        == 1
    )
    # the dry run is not counted as a request, but as a call of the tool
    assert sum(v for (name, _), v in samples.items() if name == requests) == 5
    assert (
        value(
            samples,
            "allocation_ledger_tool_duration_seconds_count",
            tool="request_resources",
        )
        == 6
    )
    assert value(samples, "allocation_ledger_releases_total", outcome="released") == 1
    assert (
        value(samples, "allocation_ledger_releases_total", outcome="already_released")
        == 1
    )
    assert value(samples, "allocation_ledger_renewals_total", outcome="renewed") == 1
    assert (
        value(
            samples,
            "allocation_ledger_tool_errors_total",
            tool="set_capacity",
            kind="invalid_arguments",
        )
        == 1
    )
    assert (
        value(
            samples,
            "allocation_ledger_background_runs_total",
            job="expiry_sweep",
            outcome="ok",
        )
        >= 1
    )
    assert value(samples, "allocation_ledger_event_log_head") == head
    for read_model in ("allocations", "capacity"):
        position = value(
            samples, "allocation_ledger_read_model_position", read_model=read_model
        )
        lag = value(
            samples, "allocation_ledger_read_model_lag_events", read_model=read_model
        )
        assert 0 < position <= head
        assert position + lag == head
    # the endpoints provisioner sets up inside the transaction: measured too
    assert (
        value(
            samples,
            "allocation_ledger_provisioning_duration_seconds_count",
            pool="default",
            outcome="active",
        )
        == 2
    )
    assert value(samples, "process_resident_memory_bytes") > 0


def test_metrics_need_a_token_when_the_server_checks_tokens(tmp_path: Path) -> None:
    tokens = [{"subject": "prometheus", "scopes": ["read"], "token": READER}]
    with http_server_process(
        tmp_path / "ledger.db", ALLOCATION_LEDGER_TOKENS=json.dumps(tokens)
    ) as (base, _):
        for headers in ({}, {"Authorization": "Bearer not-a-known-token-at-all"}):
            refused = httpx2.get(base + "/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "allocation_ledger" not in refused.text
        samples = scrape(base + "/metrics", token=READER)
        assert value(samples, "allocation_ledger_store_up") == 1
        assert (
            value(
                samples,
                "allocation_ledger_pool_capacity",
                pool="default",
                dimension="workers",
                unit="workers",
            )
            == 10
        )
        openmetrics = httpx2.get(
            base + "/metrics",
            headers={
                "Authorization": f"Bearer {READER}",
                "Accept": "application/openmetrics-text; version=1.0.0",
            },
        )
        assert openmetrics.headers["content-type"].startswith(
            "application/openmetrics-text"
        )
        assert openmetrics.text.rstrip().endswith("# EOF")


async def test_a_stdio_server_serves_metrics_on_its_metrics_port(
    tmp_path: Path,
) -> None:
    database = tmp_path / "ledger.db"
    port = free_port()
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "allocation_ledger.adapters.cli",
            "serve",
            "--metrics-port",
            str(port),
        ],
        env=server_env(database, ALLOCATION_LEDGER_CONFIG=catalog_file(tmp_path)),
        cwd=str(tmp_path),
    )
    url = f"http://127.0.0.1:{port}/metrics"
    async with Client(params) as client:
        await a_few_commands(client)
        capacities = {
            pool: await call(client, "get_capacity", pool=pool)
            for pool in ("default", "big")
        }
        samples = await anyio.to_thread.run_sync(scrape, url)
        check_pools_against_capacity(samples, capacities)
        assert (
            value(
                samples,
                "allocation_ledger_tool_duration_seconds_count",
                tool="get_capacity",
            )
            == 2
        )
        assert (
            value(
                samples, "allocation_ledger_releases_total", outcome="already_released"
            )
            == 1
        )
    with pytest.raises(httpx2.TransportError):  # gone with the server
        httpx2.get(url, timeout=2)


def test_a_metrics_port_in_use_is_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        finished = subprocess.run(
            [
                sys.executable,
                "-m",
                "allocation_ledger.adapters.cli",
                "serve",
                "--metrics-port",
                str(port),
            ],
            env=server_env(tmp_path / "ledger.db"),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert finished.returncode == 1  # not a usage error, as for the HTTP port
    assert f"cannot serve metrics on 127.0.0.1:{port}" in finished.stderr
    assert "Traceback" not in finished.stderr


@pytest.mark.postgres
async def test_two_servers_on_one_postgres_ledger_report_the_same_pool_totals(
    postgres_schema: str, tmp_path: Path
) -> None:
    init_database(postgres_settings(postgres_schema))
    env = postgres_env(postgres_schema)
    placeholder = tmp_path / "unused.db"
    with (
        http_server_process(placeholder, "--no-auth", **env) as (first, _),
        http_server_process(placeholder, "--no-auth", **env) as (second, _),
    ):
        async with http_client(first + "/mcp") as client:
            await call(
                client, "request_resources", job_id="a", mcp_servers=["x"], workers=4
            )
            await call(
                client, "request_resources", job_id="b", mcp_servers=[], workers=9
            )
            capacity = await call(client, "get_capacity")
        one = scrape(first + "/metrics")
        two = scrape(second + "/metrics")
    for samples in (one, two):
        assert pool_figures(samples, "default") == capacity_figures(capacity)
        assert (
            value(
                samples, "allocation_ledger_allocations", pool="default", state="active"
            )
            == 1
        )
    # what each process did itself is its own
    granted = {"pool": "default", "outcome": "granted", "code": ""}
    assert value(one, "allocation_ledger_requests_total", **granted) == 1
    assert value(two, "allocation_ledger_requests_total", **granted) == 0


# -- what the ledger's own work moves ----------------------------------------


def test_retries_are_counted_by_command_and_reason(tmp_path: Path) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "shared.db")
    clock = ManualClock()
    first = open_service(settings, clock=clock)
    second = open_service(settings, clock=clock)
    retries = "allocation_ledger_retries_total"
    conflict = {"command": "request_resources", "reason": "conflict"}
    stale = {"command": "request_resources", "reason": "stale_read"}
    try:
        seen_first = LedgerMetrics(first, TOOLS).registry
        seen_second = LedgerMetrics(second, TOOLS).registry
        second.ledger.request(AllocationRequest("job-0", (), 1))
        first.ledger.request(AllocationRequest("job-a", (), 3))
        assert seen_second.get_sample_value(retries, conflict) is None
        # second's cached pool is stale: its save loses on the pool's version
        second.ledger.request(AllocationRequest("job-b", (), 6))
        assert seen_second.get_sample_value(retries, conflict) == 1
        # a pool found nowhere in the cache is looked for again, fresh
        with pytest.raises(PoolNotFoundError):
            first.ledger.request(AllocationRequest("job-c", (), 1), pool="nowhere")
        assert seen_first.get_sample_value(retries, stale) == 1
        assert seen_first.get_sample_value(retries, conflict) is None
    finally:
        first.close()
        second.close()


class SlowProvisioner(RecordingProvisioner):
    """Provisions between two transactions, as a process provisioner does."""

    instant = False


def test_provisioning_is_timed_by_pool_and_outcome(
    open_services: OpenService,
) -> None:
    provisioner = SlowProvisioner()
    service = open_services(Settings(store="memory"), provisioner=provisioner)
    registry = LedgerMetrics(service, TOOLS).registry
    made = service.ledger.request(AllocationRequest("job", ("github",), 1))
    assert made.allocation.state is AllocationState.ACTIVE
    provisioner.fail_provision = RuntimeError("github did not start")
    failed = service.ledger.request(AllocationRequest("job", ("search",), 1))
    assert failed.allocation.state is AllocationState.FAILED
    histogram = "allocation_ledger_provisioning_duration_seconds_count"
    for outcome in ("active", "failed"):
        labels = {"pool": "default", "outcome": outcome}
        assert registry.get_sample_value(histogram, labels) == 1


def test_a_store_that_cannot_be_read_is_store_up_0_and_the_scrape_still_answers(
    open_services: OpenService, tmp_path: Path
) -> None:
    service = open_services(Settings(store="sqlite", database=tmp_path / "l.db"))
    service.ledger.request(AllocationRequest("job", (), 1))
    metrics = LedgerMetrics(service, TOOLS)
    healthy = parse(generate_latest(metrics.registry).decode())
    assert value(healthy, "allocation_ledger_store_up") == 1
    with sqlite3.connect(tmp_path / "l.db") as outside:
        outside.execute("DROP TABLE ledger_capacity_view")
    broken = parse(generate_latest(metrics.registry).decode())
    assert value(broken, "allocation_ledger_store_up") == 0
    assert not any(name.startswith("allocation_ledger_pool") for name, _ in broken)
    assert value(broken, "process_resident_memory_bytes") > 0


async def test_a_made_up_tool_name_makes_no_series_of_its_own(
    service: AllocationService,
) -> None:
    server = stdio_server(service)
    assert isinstance(server, LedgerServer)
    async with Client(server) as own:
        result = await own.call_tool("drop_all_tables", {})
        assert result.is_error
    registry = server.metrics.registry
    errors = "allocation_ledger_tool_errors_total"
    assert (
        registry.get_sample_value(errors, {"tool": "unknown", "kind": "refused"}) == 1
    )
    assert "drop_all_tables" not in generate_latest(registry).decode()


# -- the dashboard and the docs --------------------------------------------------

SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


async def test_the_dashboard_and_the_docs_name_only_metrics_a_server_serves(
    client: Client, service: AllocationService
) -> None:
    await call(client, "request_resources", job_id="j", mcp_servers=[], workers=1)
    server = stdio_server(service)
    assert isinstance(server, LedgerServer)
    served = {
        family.name
        for family in text_string_to_metric_families(
            generate_latest(server.metrics.registry).decode()
        )
        if family.name.startswith("allocation_ledger_")
        and not family.name.endswith("_created")  # a counter's start time
    }
    assert len(served) == 21

    def family(name: str) -> str:
        for suffix in SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in served:
                return name.removesuffix(suffix)
        return name

    dashboard = (REPO / "docs" / "grafana-dashboard.json").read_text()
    panels = json.loads(dashboard)["panels"]
    queried = {
        family(name)
        for panel in panels
        for target in panel.get("targets", [])
        for name in re.findall(r"allocation_ledger_\w+", target["expr"])
    }
    assert queried == served  # every metric has a panel, and no panel is empty
    operations = (REPO / "docs" / "operations.md").read_text()
    documented = {
        family(name)
        for name in re.findall(r"^\| `(allocation_ledger_\w+)`", operations, re.M)
    }
    assert documented == served
