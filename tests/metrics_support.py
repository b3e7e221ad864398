"""Scraping a server's metrics and reading them with prometheus_client's own
text parser."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DIMENSION_KEYS = {"cpu": "cpu", "memory": "memory", "workers": "workers"}


def parse(text: str) -> Samples:
    """Every sample of a scrape, by (name, labels)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape(url: str, token: str | None = None) -> Samples:
    """GET `url` (a /metrics endpoint), which must answer 200; its samples."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx2.get(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample; 0 when there is no such sample (a counter
    that never moved has none)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def pool_figures(samples: Samples, pool: str) -> dict[str, float]:
    """A pool's gauges under get_capacity's names: total_cpu, allocated_cpu,
    available_cpu, ... and free_mcp_ports."""
    figures: dict[str, float] = {}
    for kind, prefix in (
        ("capacity", "total"),
        ("reserved", "allocated"),
        ("available", "available"),
    ):
        for (name, labels), found in samples.items():
            label = dict(labels)
            if name != f"allocation_ledger_pool_{kind}" or label["pool"] != pool:
                continue
            if label["dimension"] == "mcp_ports":
                if kind == "available":
                    figures["free_mcp_ports"] = found
                continue
            figures[f"{prefix}_{label['dimension']}"] = found
    return figures


def capacity_figures(capacity: Mapping[str, Any]) -> dict[str, float]:
    """The same figures from a get_capacity answer."""
    figures = {
        f"{prefix}_{dimension}": float(capacity[f"{prefix}_{dimension}"])
        for prefix in ("total", "allocated", "available")
        for dimension in DIMENSION_KEYS
    }
    figures["free_mcp_ports"] = float(capacity["free_mcp_ports"])
    return figures
