"""What one server process counts and measures, in its own Prometheus registry.

Counters and histograms are this process's own (each server of several on
one PostgreSQL counts its own calls; sum them across instances). The gauges
of pools, allocations and the event log are read from the read models at
scrape time (collector.py), so every server reports the same totals.

Label values never come from a caller's input unchecked: tool names outside
the served tools are counted as "unknown", pools only as the ledger answered
them, so a client cannot create series at will.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
)

from allocation_ledger.adapters.metrics.collector import LedgerCollector
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.observer import (
    LedgerObserver,
    ProvisioningOutcome,
    RetryReason,
)

TOOL_SECONDS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_COMMANDS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
"""Commands per recorded batch; the largest is group_commit.MAX_BATCH_MEMBERS."""

PROVISIONING_SECONDS_BUCKETS = (
    0.001,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
UNKNOWN_TOOL = "unknown"


class LedgerMetrics:
    """The metrics of one server process over one service.

    Building it registers the read-model collector (pool, allocation and
    event-log gauges, read at scrape time), the process, platform and
    garbage-collector collectors of prometheus_client, and makes itself the
    ledger's observer (retries and provisioning durations). `registry` is
    what /metrics and --metrics-port serve.
    """

    def __init__(self, service: AllocationService, tools: Mapping[str, object]) -> None:
        self.registry = CollectorRegistry()
        self.tools = frozenset(tools)
        registry = self.registry
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        registry.register(LedgerCollector(service))
        self.tool_seconds = Histogram(
            "allocation_ledger_tool_duration_seconds",
            "Time to answer an MCP tool call, errors included (seconds).",
            ["tool"],
            buckets=TOOL_SECONDS_BUCKETS,
            registry=registry,
        )
        self.tool_errors = Counter(
            "allocation_ledger_tool_errors",
            "MCP tool calls answered with an error, by kind: invalid_arguments "
            "(the arguments did not validate), refused (the tool said why: not "
            "found, not allowed, conflicting request_id...) or crash.",
            ["tool", "kind"],
            registry=registry,
        )
        self.requests = Counter(
            "allocation_ledger_requests",
            "request_resources calls by outcome (granted, queued, refused, "
            "failed, replayed, error) and reason code (refused, queued and "
            "failed ones); dry runs are not counted.",
            ["pool", "outcome", "code"],
            registry=registry,
        )
        self.releases = Counter(
            "allocation_ledger_releases",
            "release_resources calls by outcome (released, already_released, "
            "failed, error).",
            ["outcome"],
            registry=registry,
        )
        self.renewals = Counter(
            "allocation_ledger_renewals",
            "renew_allocation calls by outcome (renewed, error).",
            ["outcome"],
            registry=registry,
        )
        self.retries = Counter(
            "allocation_ledger_retries",
            "Units of work run again, by command and reason: conflict (another "
            "writer saved the pool first), stale_read, time_behind.",
            ["command", "reason"],
            registry=registry,
        )
        self.background_runs = Counter(
            "allocation_ledger_background_runs",
            "Runs of the expiry sweeper (expiry_sweep) and the idle MCP server "
            "stopper (idle_stop), by outcome (ok, error).",
            ["job", "outcome"],
            registry=registry,
        )
        self.expired = Counter(
            "allocation_ledger_expired_allocations",
            "Allocations expired because their lease ran out, by who expired "
            "them (sweeper, cleanup_expired).",
            ["by"],
            registry=registry,
        )
        self.idle_stopped = Counter(
            "allocation_ledger_idle_servers_stopped",
            "MCP servers stopped for being idle past their pool's idle timeout.",
            registry=registry,
        )
        self.provisioning_seconds = Histogram(
            "allocation_ledger_provisioning_duration_seconds",
            "Time the provisioner took to set up one allocation (its MCP "
            "servers answering, its workers started), by pool and outcome "
            "(active, failed). Near zero with the endpoints provisioner.",
            ["pool", "outcome"],
            buckets=PROVISIONING_SECONDS_BUCKETS,
            registry=registry,
        )
        self.batch_commands = Histogram(
            "allocation_ledger_commit_batch_commands",
            "Commands whose saves were recorded together in one transaction "
            "(group commit), per batch, by outcome (recorded, failed). Above "
            "1 when callers overlap: one durable commit served them all.",
            ["outcome"],
            buckets=BATCH_COMMANDS_BUCKETS,
            registry=registry,
        )
        service.ledger.observer = _Observer(self)

    def tool_called(
        self,
        tool: str,
        seconds: float,
        *,
        structured: Mapping[str, Any] | None,
        error: str | None,
    ) -> None:
        """Count one tool call: its duration, and its outcome when it asks,
        releases, renews or cleans up. `structured` is the call's structured
        result (None on error); `error` the kind of error, if any."""
        name = tool if tool in self.tools else UNKNOWN_TOOL
        self.tool_seconds.labels(name).observe(seconds)
        if error is not None:
            self.tool_errors.labels(name, error).inc()
        if tool == "request_resources":
            outcome = request_outcome(structured)
            if outcome is not None:
                self.requests.labels(*outcome).inc()
        elif tool == "release_resources":
            status = "error" if structured is None else str(structured["status"])
            self.releases.labels(status).inc()
        elif tool == "renew_allocation":
            self.renewals.labels("error" if structured is None else "renewed").inc()
        elif tool == "cleanup_expired" and structured is not None:
            self.expired.labels("cleanup_expired").inc(int(structured["count"]))

    def background_run(self, job: str, ok: bool) -> None:
        """One run of a background job ("expiry_sweep" or "idle_stop")."""
        self.background_runs.labels(job, "ok" if ok else "error").inc()


def request_outcome(
    structured: Mapping[str, Any] | None,
) -> tuple[str, str, str] | None:
    """(pool, outcome, code) of a request_resources answer; None for a dry run.

    Outcomes: granted (active or pending), queued, refused (not reserved,
    with its reason code), failed (provisioning failed), replayed (a retry
    with a used request_id), error (a tool error; no pool); an allocation
    that ended while provisioning ran counts under its state.
    """
    if structured is None:
        return ("", "error", "")
    if structured.get("dry_run"):
        return None
    pool = str(structured.get("pool", ""))
    if structured.get("replayed"):
        return (pool, "replayed", "")
    status = str(structured.get("status", ""))
    reason = structured.get("reason") or structured.get("waiting_for") or {}
    code = str(reason.get("code", ""))
    if status in ("active", "pending"):
        return (pool, "granted", "")
    if status == "failed":
        return (pool, "failed" if code == "provisioning_failed" else "refused", code)
    return (pool, status, code if status == "queued" else "")


class _Observer(LedgerObserver):
    """The ledger's retries, batches and provisioning, into the metrics."""

    def __init__(self, metrics: LedgerMetrics) -> None:
        self.metrics = metrics

    def retried(self, command: str, reason: RetryReason) -> None:
        self.metrics.retries.labels(command, reason).inc()

    def batch_recorded(self, commands: int, events: int, *, ok: bool) -> None:
        outcome = "recorded" if ok else "failed"
        self.metrics.batch_commands.labels(outcome).observe(commands)

    def provisioning(self, pool: str) -> Callable[[ProvisioningOutcome], None]:
        started = time.perf_counter()
        histogram = self.metrics.provisioning_seconds

        def done(outcome: ProvisioningOutcome) -> None:
            histogram.labels(pool, outcome).observe(time.perf_counter() - started)

        return done
