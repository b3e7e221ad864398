"""Shared test configuration: Hypothesis profiles.

Choose one with the HYPOTHESIS_PROFILE environment variable:

- ``ci`` (default): the thorough run CI does on every change;
- ``dev``: a quick run while editing;
- ``long``: a soak run, ten times the examples of ``ci``.

Also the ledger services the unit tests run on, over the in-memory store and a
SQLite file (``store_settings``, ``open_ledger_service``, ``ledger_service``),
and the MCP server in memory that the MCP tests talk to through ``mcp.Client``
(``anyio_backend``, ``clock``, ``open_memory``, ``service``, ``client``). A test
module overrides any of them by defining a fixture of the same name.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from mcp import Client

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.mcp.server import stdio_server
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.provisioner import Provisioner
from tests.ledger_support import OpenService
from tests.mcp_support import OpenMemory

for _name, _examples, _steps in (("ci", 200, 50), ("dev", 25, 30), ("long", 2000, 80)):
    settings.register_profile(
        _name,
        max_examples=_examples,
        stateful_step_count=_steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        print_blob=True,
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# -- ledger services on the in-memory store and on a SQLite file ---------------

LEDGER_STORES = ("memory", "sqlite")


def ledger_settings(store: str, directory: Path) -> Settings:
    """Settings for a ledger on `store`; a SQLite file lives in `directory`."""
    if store == "memory":
        return Settings(store="memory")
    return Settings(store="sqlite", database=directory / "ledger.db")


@pytest.fixture
def manual_clock() -> ManualClock:
    """The ledger's clock; it only moves when a test advances it."""
    return ManualClock()


@pytest.fixture(params=LEDGER_STORES)
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The store a test runs on: parametrized over in-memory and a SQLite file."""
    return ledger_settings(request.param, tmp_path)


@pytest.fixture
def open_services(manual_clock: ManualClock) -> Iterator[OpenService]:
    """Opens services on the settings given (closed at the end of the test).

    Keyword arguments: `provisioner`, `new_allocation_id`, `clock` (by default
    the test's manual clock).
    """
    opened: list[AllocationService] = []

    def open_(
        settings: Settings,
        *,
        provisioner: Provisioner | None = None,
        new_allocation_id: Callable[[], str] | None = None,
        clock: ManualClock | None = None,
    ) -> AllocationService:
        service = open_service(
            settings,
            clock=clock or manual_clock,
            provisioner=provisioner,
            new_allocation_id=new_allocation_id,
        )
        opened.append(service)
        return service

    yield open_
    for service in opened:
        service.close()


@pytest.fixture
def open_ledger_service(
    store_settings: Settings, open_services: OpenService
) -> OpenService:
    """Opens services on the test's store (closed at the end of the test).

    Keyword arguments: `settings` (instead of the test's store), and those of
    `open_services`.
    """

    def open_(*, settings: Settings | None = None, **options: Any) -> AllocationService:
        return open_services(settings or store_settings, **options)

    return open_


@pytest.fixture
def ledger_service(open_ledger_service: OpenService) -> AllocationService:
    """A service with the default provisioner on the test's store."""
    return open_ledger_service()


# -- the MCP server in memory, through mcp.Client -------------------------------


@pytest.fixture
def anyio_backend() -> str:
    """The async tests (marked `anyio`) run on asyncio."""
    return "asyncio"


@pytest.fixture
def clock(manual_clock: ManualClock) -> ManualClock:
    """The clock of the MCP tests' services: the test's manual clock."""
    return manual_clock


@pytest.fixture
def open_memory(open_services: OpenService, clock: ManualClock) -> OpenMemory:
    """Opens in-memory services on `clock` (closed at the end of the test);
    keyword arguments are settings, e.g. `sweep_interval_seconds=0.05`."""

    def open_(**fields: Any) -> AllocationService:
        return open_services(Settings(store="memory", **fields), clock=clock)

    return open_


@pytest.fixture
def service(open_memory: OpenMemory) -> AllocationService:
    """The in-memory service behind `client`."""
    return open_memory()


@pytest.fixture
async def client(service: AllocationService) -> AsyncIterator[Client]:
    """An MCP client connected in memory to the server on `service`."""
    async with Client(stdio_server(service)) as connected:
        yield connected
