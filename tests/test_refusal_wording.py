"""How refusals read to an agent: amounts with their units, one and many."""

from __future__ import annotations

import pytest

from allocation_ledger.adapters.mcp.schemas.refusals import Reason, refusal_message


@pytest.mark.parametrize(
    ("dimension", "requested", "available", "wording"),
    [
        ("workers", 1, 0, "requested 1 worker, the pool has 0 in all"),
        ("workers", 5, 4, "requested 5 workers, the pool has 4 in all"),
        ("cpu", 1, 0.5, "requested 1 core of CPU, the pool has 0.5 in all"),
        ("cpu", 2.5, 2, "requested 2.5 cores of CPU, the pool has 2 in all"),
        ("memory", 4096, 2048, "requested 4096 MB of memory, the pool has 2048"),
        ("mcp_ports", 1, 0, "requested 1 MCP port, the pool has 0 in all"),
    ],
)
def test_exceeds_pool_names_the_amount_with_its_unit(
    dimension: str, requested: float, available: float, wording: str
) -> None:
    """'requested 1 workers' read wrong; cpu and memory gave no unit at all."""
    reason = Reason(
        code="exceeds_pool",
        dimension=dimension,
        requested=requested,
        available=available,
    )
    assert refusal_message(reason).startswith(f"Exceeds the pool: {wording}")


def test_the_original_wording_of_a_shortfall_is_kept() -> None:
    """Agents match on it: 'Insufficient workers: requested 10, available 6'."""
    reason = Reason(
        code="insufficient_capacity", dimension="workers", requested=10, available=6
    )
    assert refusal_message(reason) == "Insufficient workers: requested 10, available 6"
