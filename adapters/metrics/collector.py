"""The gauges read from the read models at scrape time: every pool's
capacity, what is reserved and available, its queue, MCP servers and
unfinished allocations; the event log's head and the read models' lag.

Read from the read models (shared by every server on one PostgreSQL), not
counted in the process, so several servers report the same pool totals: in
PromQL take `max by (pool, ...)` across instances, never `sum`.

A scrape first notes how far the read models had got, then catches them up
(as any query does) and reads them. Terminal allocations are not counted:
they only ever grow, and counting them reads every allocation ever made
(about 1.5 s a scrape at a million on SQLite); the request, release and
expiry counters give their rates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.ports import MCP_PORT_FIRST, MCP_PORT_LAST
from allocation_ledger.domain.values import MILLICORES_PER_CORE, Resources
from allocation_ledger.projections.store import UNFINISHED_STATES
from allocation_ledger.projections.views import CapacityView

logger = logging.getLogger("allocation_ledger.metrics")

MCP_PORTS_PER_POOL = MCP_PORT_LAST - MCP_PORT_FIRST + 1
READ_MODELS = ("allocations", "capacity")
"""The read models; they are caught up together, in one transaction, so
they share one position."""
DIMENSIONS = (("cpu", "cores"), ("memory", "MB"), ("workers", "workers"))
SERVER_STATUSES = ("running", "idle")


class LedgerCollector(Collector):
    """Gauges of the ledger's read models, read at each scrape.

    When the store cannot be read, only `allocation_ledger_store_up 0` is
    given (and the failure logged), so the scrape itself still succeeds.
    """

    def __init__(self, service: AllocationService) -> None:
        self.service = service

    def describe(self) -> Iterable[Metric]:
        """Nothing: the registry must not read the store when it is built."""
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "allocation_ledger_store_up",
            "1 if this scrape could read the event log and the read models, else 0.",
        )
        try:
            families = list(self._read())
        except Exception:
            logger.exception("metrics: cannot read the ledger's read models")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self) -> Iterator[Metric]:
        service = self.service
        position = service.store.position()
        head = service.projector.log.max_notification_id() or 0
        service.read_models.catch_up()
        views = service.store.list_capacities()
        if not any(view.pool == DEFAULT_POOL for view in views):
            default = service.read_models.capacity(DEFAULT_POOL)
            if default is not None:
                views.append(default)
        views.sort(key=lambda view: view.pool)
        yield from _event_log(head, position)
        yield from _capacity(views)
        yield from _allocations(views, service.store.count_unfinished())


def _event_log(head: int, position: int) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "allocation_ledger_event_log_head",
        "Position of the last event in the event log (its rate: events "
        "written per second, by every server).",
        value=head,
    )
    positions = GaugeMetricFamily(
        "allocation_ledger_read_model_position",
        "Position of the last event a read model had applied when the scrape began.",
        labels=["read_model"],
    )
    lag = GaugeMetricFamily(
        "allocation_ledger_read_model_lag_events",
        "Events written that a read model had not applied yet when the "
        "scrape began (the scrape then catches it up, as every query does).",
        labels=["read_model"],
    )
    for name in READ_MODELS:
        positions.add_metric([name], position)
        lag.add_metric([name], max(head - position, 0))
    yield positions
    yield lag


def _amounts(resources: Resources) -> dict[str, float]:
    return {
        "cpu": resources.cpu_millicores / MILLICORES_PER_CORE,
        "memory": resources.memory_mib,
        "workers": resources.workers,
    }


def _capacity(views: list[CapacityView]) -> Iterator[Metric]:
    labels = ["pool", "dimension", "unit"]
    kinds = {
        kind: GaugeMetricFamily(
            f"allocation_ledger_pool_{kind}",
            f"A pool's {text} by dimension, as get_capacity shows it: cpu "
            "in cores, memory in MB, workers and mcp_ports as counts.",
            labels=labels,
        )
        for kind, text in (
            ("capacity", "total capacity"),
            ("reserved", "capacity reserved by live allocations"),
            ("available", "capacity left (negative after capacity was lowered)"),
        )
    }
    for view in views:
        figures = {
            "capacity": _amounts(view.total),
            "reserved": _amounts(view.reserved),
            "available": _amounts(view.available),
        }
        servers = len(view.servers)
        figures["capacity"]["mcp_ports"] = MCP_PORTS_PER_POOL
        figures["reserved"]["mcp_ports"] = servers
        figures["available"]["mcp_ports"] = MCP_PORTS_PER_POOL - servers
        for kind, family in kinds.items():
            for dimension, unit in (*DIMENSIONS, ("mcp_ports", "ports")):
                family.add_metric(
                    [view.pool, dimension, unit], figures[kind][dimension]
                )
    yield from kinds.values()


def _allocations(
    views: list[CapacityView], unfinished: dict[tuple[str, str], int]
) -> Iterator[Metric]:
    queue = GaugeMetricFamily(
        "allocation_ledger_queue_length",
        "Requests waiting in a pool's queue.",
        labels=["pool"],
    )
    allocations = GaugeMetricFamily(
        "allocation_ledger_allocations",
        "Allocations in each state that is not final (queued, pending, "
        "active, releasing), by pool.",
        labels=["pool", "state"],
    )
    servers = GaugeMetricFamily(
        "allocation_ledger_mcp_servers",
        "MCP server instances up in a pool, by status: running (used by live "
        "allocations) or idle (unused, stopped after the idle timeout).",
        labels=["pool", "status"],
    )
    pools = sorted({view.pool for view in views} | {pool for pool, _ in unfinished})
    for view in views:
        queue.add_metric([view.pool], len(view.queue))
        statuses = dict.fromkeys(SERVER_STATUSES, 0)
        for server in view.servers.values():
            statuses[server.status] += 1
        for status, count in statuses.items():
            servers.add_metric([view.pool, status], count)
    for pool in pools:
        for state in UNFINISHED_STATES:
            allocations.add_metric(
                [pool, state.value], unfinished.get((pool, state.value), 0)
            )
    yield queue
    yield allocations
    yield servers
