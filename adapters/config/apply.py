"""Applying the catalog: the ledger's pools become what the config file says.

Run by `serve` at start; changes are recorded with actor `config`, and an
unchanged file records nothing (docs/provisioning.md, "Catalog").
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from allocation_ledger.adapters.config.catalog import (
    CONFIG_ACTOR,
    Catalog,
    CatalogError,
    entry_name,
)
from allocation_ledger.adapters.mcp.schemas.units import cores
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool import DEFAULT_POOL, Pool
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.results import PoolResult
from allocation_ledger.domain.values import Resources

DEFAULT_FILE_LABEL = "config file"
"""How errors name the file when the caller does not say which it is."""


def apply_catalog(
    ledger: Ledger,
    catalog: Catalog,
    *,
    actor: str = CONFIG_ACTOR,
    path: str | Path = DEFAULT_FILE_LABEL,
) -> list[str]:
    """Create or reconfigure the pools the catalog describes; say what changed.

    Each `[pools.NAME]` sets the totals, worker size and port ranges it gives (keys
    left out keep the pool's value). When the catalog names MCP servers, every
    listed pool and the default one get exactly the catalog's server costs and each
    server's idle timeout (the pool's own, for a name the catalog does not list, is
    the shortest of them). Pools not in the file are left as they are. Unchanged
    values record nothing, so applying the same file again writes no events. Returns
    one line per pool created or changed, for the log. Raises CatalogError (one line
    naming `path`, the entry and the key) when the ledger refuses an entry's value,
    e.g. port ranges that touch another pool's ports; the domain's other
    LedgerErrors as they are. Nothing of the refused pool is written (pools before
    it are).
    """
    costs: dict[str, Resources] | None = None
    idle: int | None = None
    idle_each: dict[str, int] | None = None
    names = list(catalog.pools)
    if catalog.mcp_servers:
        costs = catalog.server_costs()
        idle = min(s.idle_timeout_seconds for s in catalog.mcp_servers.values())
        idle_each = {
            name: entry.idle_timeout_seconds
            for name, entry in catalog.mcp_servers.items()
        }
        if DEFAULT_POOL not in catalog.pools:
            names.insert(0, DEFAULT_POOL)
    changes: list[str] = []
    for name in names:
        before = _stored_pool(ledger, name)
        base = before.settings if before is not None else PoolSettings()
        entry = catalog.pools.get(name)
        try:
            result = ledger.configure_pool(
                name,
                capacity=entry.capacity(base.capacity) if entry else None,
                worker_size=entry.worker_size(base.worker_size) if entry else None,
                server_costs=costs,
                idle_timeout_seconds=idle,
                server_idle_timeouts=idle_each,
                worker_ports=entry.worker_span if entry else None,
                mcp_ports=entry.mcp_span if entry else None,
                actor=actor,
            )
        except InvalidRequestError as error:
            if entry is None:
                raise
            problem = str(error)
            raise CatalogError(
                path,
                entry_name("pools", name),
                error.field,
                problem,
                field_in_problem=problem.startswith(error.field),
            ) from None
        line = _describe(name, before, result)
        if line is not None:
            changes.append(line)
    return changes


def _stored_pool(ledger: Ledger, name: str) -> Pool | None:
    if name not in ledger.pool_names():
        return None
    return ledger.pool(name)


def _amounts(amount: Resources, *, workers: bool = True) -> str:
    text = f"cpu {cores(amount.cpu_millicores):g}, memory {amount.memory_mib} MB"
    return text + (f", workers {amount.workers}" if workers else "")


def _settings_text(settings: PoolSettings) -> str:
    costs = "".join(
        f"; {server} costs {_amounts(cost, workers=False)}"
        for server, cost in sorted((settings.server_costs or {}).items())
    )
    return (
        f"{_amounts(settings.capacity)}; each worker "
        f"{_amounts(settings.worker_size, workers=False)}; idle MCP servers stop "
        f"after {settings.idle_timeout_seconds} s{costs}"
    )


def _timeouts_text(timeouts: Mapping[str, int] | None) -> str:
    if not timeouts:
        return "the pool's"
    return ", ".join(
        f"{name} {seconds} s" for name, seconds in sorted(timeouts.items())
    )


def _ports_text(ports: PortRanges) -> str:
    return (
        f"workers {ports.worker_first}-{ports.worker_last}, "
        f"MCP servers {ports.mcp_first}-{ports.mcp_last}"
    )


def _describe(name: str, was: Pool | None, result: PoolResult) -> str | None:
    after = result.pool.settings
    if result.position is None:
        return None
    ports = _ports_text(result.pool.ports)
    if result.created:
        return f"pool {name}: created with {_settings_text(after)}; ports {ports}"
    if was is None:  # another server created it meanwhile
        return f"pool {name}: set to {_settings_text(after)}; ports {ports}"
    before = was.settings
    said: list[str] = []
    if result.pool.ports != was.ports:
        said.append(f"ports {_ports_text(was.ports)} -> {ports}")
    if after.capacity != before.capacity:
        said.append(f"totals {_amounts(before.capacity)} -> {_amounts(after.capacity)}")
    if after.worker_size != before.worker_size:
        old = _amounts(before.worker_size, workers=False)
        said.append(f"worker {old} -> {_amounts(after.worker_size, workers=False)}")
    if after.server_idle_timeouts != before.server_idle_timeouts:
        said.append(
            "idle timeouts "
            f"{_timeouts_text(before.server_idle_timeouts)} -> "
            f"{_timeouts_text(after.server_idle_timeouts)}"
        )
    if after.idle_timeout_seconds != before.idle_timeout_seconds:
        said.append(
            f"idle timeout {before.idle_timeout_seconds} s -> "
            f"{after.idle_timeout_seconds} s"
        )
    old_costs = dict(before.server_costs or {})
    new_costs = dict(after.server_costs or {})
    for server in sorted(set(old_costs) | set(new_costs)):
        cost_was = old_costs.get(server, Resources())
        cost_now = new_costs.get(server, Resources())
        if cost_was != cost_now:
            said.append(
                f"{server} costs {_amounts(cost_was, workers=False)} -> "
                f"{_amounts(cost_now, workers=False)}"
            )
    return f"pool {name}: " + "; ".join(said) if said else None
