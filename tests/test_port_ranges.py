"""Pools' port ranges: given in the catalog, kept apart, changed safely.

A pool hands out its workers' and MCP servers' ports from ranges of its own
(`worker_ports`, `mcp_ports` in the catalog; by default the original rule).
Ranges never overlap another pool's, nor a port another pool still holds; a
change applies to new assignments only (docs/provisioning.md, "Port ranges").
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from allocation_ledger.adapters.cli.entry_point import main
from allocation_ledger.adapters.config.apply import apply_catalog
from allocation_ledger.adapters.config.catalog import CONFIG_ACTOR, CatalogError
from allocation_ledger.adapters.config.file import load_catalog
from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.mcp.schemas.capacity import capacity_result
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.pool import Pool
from allocation_ledger.domain.ports import PortRanges
from allocation_ledger.domain.registry import PoolRegistry
from allocation_ledger.domain.values import (
    EXCEEDS_POOL,
    AllocationRequest,
    AllocationState,
    Dimension,
    Resources,
)
from tests.ledger_support import (
    OpenService,
    RecordingProvisioner,
    last_position,
    sequential_ids,
    stored_events,
)
from tests.mcp_support import REPO
from tests.process_support import PORT_BLOCK, PORTS_FIRST


@pytest.fixture
def provisioner() -> RecordingProvisioner:
    return RecordingProvisioner()


@pytest.fixture
def service(
    open_ledger_service: OpenService, provisioner: RecordingProvisioner
) -> AllocationService:
    return open_ledger_service(
        provisioner=provisioner, new_allocation_id=sequential_ids()
    )


@pytest.fixture
def ledger(service: AllocationService) -> Ledger:
    return service.ledger


def grant(
    ledger: Ledger, pool: str, *, servers: tuple[str, ...] = (), workers: int = 0
) -> tuple[str, list[int], dict[str, str]]:
    """Request and answer (allocation id, worker ports, server endpoints)."""
    made = ledger.request(
        AllocationRequest("job", servers, workers=workers), pool=pool
    ).allocation
    assert made.state is AllocationState.ACTIVE, made.rejection
    return (
        made.allocation_id,
        [s.port for s in made.workers],
        dict(made.endpoints.servers),
    )


def test_a_pool_hands_out_ports_from_the_ranges_it_was_given(ledger: Ledger) -> None:
    ledger.configure_pool(
        "lab", worker_ports=(40_010, 40_019), mcp_ports=(40_000, 40_004)
    )
    _, workers, endpoints = grant(ledger, "lab", servers=("git", "web"), workers=3)
    assert workers == [40_010, 40_011, 40_012]
    assert endpoints == {
        "git": "http://localhost:40000",
        "web": "http://localhost:40001",
    }
    assert ledger.pool("lab").ports == PortRanges(40_010, 40_019, 40_000, 40_004)


def test_a_range_may_not_touch_another_pools_ports(ledger: Ledger) -> None:
    ledger.configure_pool(
        "a", worker_ports=(40_000, 40_099), mcp_ports=(40_100, 40_109)
    )
    position = last_position(ledger)
    with pytest.raises(InvalidRequestError) as raised:
        ledger.configure_pool("b", mcp_ports=(40_050, 40_059))
    assert raised.value.field == "mcp_ports"
    assert str(raised.value) == (
        "mcp_ports [40050, 40059] overlaps the ports of pool 'a' [40000, 40099]"
    )
    with pytest.raises(InvalidRequestError) as raised:
        ledger.configure_pool("a", worker_ports=(9_050, 9_200))
    assert str(raised.value) == (
        "worker_ports [9050, 9200] overlaps the ports of pool 'default' [9000, 9099]"
    )
    assert last_position(ledger) == position  # nothing written
    assert "b" not in ledger.pool_names()


def test_ranges_must_be_ordered_in_the_port_space_and_apart(ledger: Ledger) -> None:
    for ranges, field, message in (
        ({"mcp_ports": (40_010, 40_000)}, "mcp_ports", "first <= last"),
        ({"mcp_ports": (0, 10)}, "mcp_ports", "from 1 to 65535"),
        ({"worker_ports": (65_530, 65_536)}, "worker_ports", "from 1 to 65535"),
        (
            {"worker_ports": (40_000, 40_099), "mcp_ports": (40_099, 40_110)},
            "mcp_ports",
            "overlaps worker_ports",
        ),
    ):
        with pytest.raises(InvalidRequestError, match=message) as raised:
            ledger.configure_pool("lab", **ranges)  # type: ignore[arg-type]
        assert raised.value.field == field


def test_the_worker_range_has_a_port_for_every_worker(ledger: Ledger) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        ledger.configure_pool(
            "lab", worker_ports=(40_000, 40_004), mcp_ports=(40_005, 40_009)
        )  # a new pool has 10 workers
    assert raised.value.field == "workers"
    assert "at most 5" in str(raised.value)
    ledger.configure_pool(
        "lab",
        capacity=Resources(4_000, 4_096, 5),
        worker_ports=(40_000, 40_004),
        mcp_ports=(40_005, 40_009),
    )
    with pytest.raises(InvalidRequestError, match="at most 5"):
        ledger.set_capacity(Resources(4_000, 4_096, 6), pool="lab")
    assert ledger.pool("lab").settings.capacity.workers == 5


def test_a_new_pool_without_ranges_gets_the_lowest_free_block(ledger: Ledger) -> None:
    # The first other pool would get 10000-11099; that block is taken.
    ledger.configure_pool(
        "fixed", worker_ports=(10_500, 10_509), mcp_ports=(10_510, 10_519)
    )
    ledger.create_pool("next")
    assert ledger.pool("next").ports == PortRanges.for_other_pool(1)
    ledger.create_pool("third")
    assert ledger.pool("third").ports == PortRanges.for_other_pool(2)


def test_new_ranges_apply_to_new_ports_and_held_ones_stay(
    ledger: Ledger, service: AllocationService, provisioner: RecordingProvisioner
) -> None:
    ledger.configure_pool(
        "lab", worker_ports=(40_000, 40_009), mcp_ports=(40_010, 40_014)
    )
    held, held_workers, held_servers = grant(ledger, "lab", servers=("git",), workers=2)
    idle, _, _ = grant(ledger, "lab", servers=("web",))
    ledger.release(idle)  # web is idle on 40011
    position = last_position(ledger)

    ledger.configure_pool(
        "lab", worker_ports=(41_000, 41_009), mcp_ports=(41_010, 41_014)
    )

    written = stored_events(ledger, position)
    assert [type(e.event).__name__ for e in written] == [
        "ServerStopped",  # web: idle outside the new range
        "PortsChanged",
        "PortsChanged",  # the registry's record
    ]
    assert isinstance(written[1].event, Pool.PortsChanged)
    assert isinstance(written[2].event, PoolRegistry.PortsChanged)
    assert provisioner.stopped == [("web", 40_011)]
    pool = ledger.pool("lab")
    assert set(pool.servers) == {"git"}  # in use: it keeps its port
    assert pool.servers["git"].port == 40_010
    assert pool.worker_ports == set(held_workers) == {40_000, 40_001}

    _, workers, endpoints = grant(ledger, "lab", servers=("git", "web"), workers=2)
    assert workers == [41_000, 41_001]
    assert endpoints == {"git": held_servers["git"], "web": "http://localhost:41010"}
    ledger.release(held)
    assert audit.verify(service).clean


def test_a_range_may_not_take_a_port_another_pool_still_holds(
    ledger: Ledger, service: AllocationService
) -> None:
    ledger.configure_pool(
        "a", worker_ports=(40_000, 40_009), mcp_ports=(40_010, 40_019)
    )
    holder, _, _ = grant(ledger, "a", servers=("git",), workers=1)
    ledger.configure_pool(
        "a", worker_ports=(42_000, 42_009), mcp_ports=(42_010, 42_019)
    )
    with pytest.raises(InvalidRequestError) as raised:
        ledger.configure_pool(
            "b", worker_ports=(40_000, 40_009), mcp_ports=(40_020, 40_029)
        )
    assert str(raised.value) == (
        "worker_ports [40000, 40009] takes port 40000, which pool 'a' still holds "
        "(from its earlier ranges)"
    )
    ledger.release(holder)
    ledger.configure_pool(
        "b", worker_ports=(40_000, 40_009), mcp_ports=(40_030, 40_039)
    )
    with pytest.raises(InvalidRequestError, match="40010, which pool 'a' still holds"):
        ledger.configure_pool("b", mcp_ports=(40_010, 40_019))  # git idles there
    assert audit.verify(service).clean


def test_a_request_naming_more_servers_than_the_range_has_ports_never_fits(
    ledger: Ledger,
) -> None:
    ledger.configure_pool(
        "lab", worker_ports=(40_000, 40_009), mcp_ports=(40_010, 40_011)
    )
    made = ledger.request(
        AllocationRequest("job", ("a", "b", "c")), pool="lab", wait=True
    ).allocation
    assert made.state is AllocationState.FAILED
    assert made.rejection is not None
    assert (made.rejection.code, made.rejection.dimension) == (
        EXCEEDS_POOL,
        Dimension.MCP_PORTS,
    )
    assert ledger.pool("lab").queue == {}


def test_get_capacity_shows_the_ranges_and_the_free_ports_in_them(
    ledger: Ledger, service: AllocationService
) -> None:
    ledger.configure_pool(
        "lab", worker_ports=(40_000, 40_009), mcp_ports=(40_010, 40_014)
    )
    grant(ledger, "lab", servers=("git",))
    view = service.read_models.capacity("lab")
    assert view is not None
    shown = capacity_result(view).model_dump(mode="json")
    assert shown["mcp_ports"] == [40_010, 40_014]
    assert shown["worker_ports"] == [40_000, 40_009]
    assert shown["free_mcp_ports"] == 4
    default = service.read_models.capacity()
    assert default is None or capacity_result(default).mcp_ports == (9_000, 9_099)


# -- from the config file -------------------------------------------------------


def test_the_catalog_gives_a_pool_its_ranges_and_records_them_as_config(
    ledger: Ledger, tmp_path: Path
) -> None:
    text = (
        "[pools.lab]\nworkers = 4\n"
        "mcp_ports = [40010, 40014]\nworker_ports = [40000, 40003]\n"
    )
    catalog = load_catalog(_write(tmp_path, text))
    changes = apply_catalog(ledger, catalog)
    assert changes[0].endswith("ports workers 40000-40003, MCP servers 40010-40014")
    assert ledger.pool("lab").ports == PortRanges(40_000, 40_003, 40_010, 40_014)
    position = last_position(ledger)
    assert apply_catalog(ledger, catalog) == []  # unchanged: nothing written
    moved = text.replace("[40010, 40014]", "[40020, 40029]")
    assert apply_catalog(ledger, load_catalog(_write(tmp_path, moved))) == [
        "pool lab: ports workers 40000-40003, MCP servers 40010-40014 -> "
        "workers 40000-40003, MCP servers 40020-40029"
    ]
    written = stored_events(ledger, position)
    assert written
    assert {e.event.actor for e in written} == {CONFIG_ACTOR}


def test_a_refused_range_names_the_file_the_entry_and_the_key(
    ledger: Ledger, tmp_path: Path
) -> None:
    ledger.configure_pool(
        "other", worker_ports=(40_000, 40_099), mcp_ports=(40_100, 40_109)
    )
    path = _write(tmp_path, "[pools.lab]\nmcp_ports = [40090, 40095]\n")
    with pytest.raises(CatalogError) as raised:
        apply_catalog(ledger, load_catalog(path), path="config.toml")
    assert str(raised.value) == (
        "config.toml: [pools.lab] mcp_ports [40090, 40095] overlaps the ports of "
        "pool 'other' [40000, 40099]"
    )
    assert (raised.value.entry, raised.value.field) == ("pools.lab", "mcp_ports")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_serve_stops_at_start_with_the_line_naming_the_refused_range(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    open_services: OpenService,
) -> None:
    database = tmp_path / "ledger.db"
    settings = Settings(store="sqlite", database=database)
    earlier = open_services(settings)
    earlier.ledger.configure_pool(
        "other", worker_ports=(40_000, 40_099), mcp_ports=(40_100, 40_109)
    )
    earlier.close()
    config = _write(tmp_path, "[pools.lab]\nworker_ports = [40050, 40059]\n")
    for name, value in (
        ("STORE", "sqlite"),
        ("DATABASE", str(database)),
        ("CONFIG", str(config)),
    ):
        monkeypatch.setenv(f"ALLOCATION_LEDGER_{name}", value)
    assert main(["serve"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"allocation-ledger: {config}: [pools.lab] worker_ports [40050, 40059] "
        "overlaps the ports of pool 'other' [40000, 40099]"
    )


HOLD_A_BLOCK = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.process_support import PORTS_FIRST
print(PORTS_FIRST, flush=True)
time.sleep(30)
"""


def test_test_runs_side_by_side_claim_different_ports(tmp_path: Path) -> None:
    """Two runs of the process tests at once never share POOL's ports."""
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD_A_BLOCK, str(REPO)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for _ in range(2)
    ]
    try:
        firsts = [int(run.stdout.readline()) for run in runs if run.stdout]
    finally:
        for run in runs:
            run.kill()
            run.wait(10)
    assert len({*firsts, PORTS_FIRST}) == 3  # this run's, and each of theirs
    blocks = sorted({*firsts, PORTS_FIRST})
    assert all(b - a >= PORT_BLOCK for a, b in itertools.pairwise(blocks))


def test_a_range_may_not_take_a_port_the_pool_holds_for_the_other_kind(
    ledger: Ledger, service: AllocationService
) -> None:
    ledger.configure_pool(
        "lab", worker_ports=(40_000, 40_009), mcp_ports=(40_010, 40_019)
    )
    grant(ledger, "lab", servers=("git",), workers=1)  # git on 40010, a worker on 40000
    with pytest.raises(InvalidRequestError) as raised:  # the two ranges swapped
        ledger.configure_pool(
            "lab", worker_ports=(40_010, 40_019), mcp_ports=(40_000, 40_009)
        )
    assert str(raised.value) == (
        "worker_ports [40010, 40019] takes port 40010, which an MCP server of this "
        "pool still holds (from its earlier ranges)"
    )
    with pytest.raises(InvalidRequestError, match="40000, which a worker of this"):
        ledger.configure_pool(
            "lab", mcp_ports=(40_000, 40_009), worker_ports=(40_020, 40_029)
        )
    assert audit.verify(service).clean
