"""A ledger written when every allocation paid for its MCP servers replays as it was.

`fixtures/server-cost-ledger.db` was written by the ledger before an MCP
server's cost was reserved once per running instance (see
`fixtures/write_server_cost_ledger.py`; never regenerate it): each allocation
naming a server was charged its cost in its `Reserved` amounts, and its
`ServerStarted` events carry no cost. `fixtures/server-cost-ledger.json` holds
what its read models showed then. The current code must verify that history
clean and show exactly the same, from the stored read models and from read
models rebuilt from the log; an allocation attaching to an instance started
then charges the instance's cost once, and the history still verifies.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService, open_service
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.pool import Pool, pool_uuid
from allocation_ledger.domain.values import AllocationRequest, Resources
from allocation_ledger.projections.codec import allocation_to_dict, capacity_to_dict
from allocation_ledger.projections.store import ListingQuery
from allocation_ledger.projections.usage import UsageQuery
from tests.ledger_support import assert_decoder_agrees

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEDGER = FIXTURES / "server-cost-ledger.db"
SHOWN: dict[str, Any] = json.loads((FIXTURES / "server-cost-ledger.json").read_text())
NOW = datetime.fromisoformat(SHOWN["now"])
GITHUB = Resources(250, 128, 0)


@pytest.fixture
def then() -> ManualClock:
    """The clock, at the moment the answers were taken."""
    return ManualClock(NOW)


@pytest.fixture
def service(tmp_path: Path, then: ManualClock) -> Iterator[AllocationService]:
    """A copy of the fixture, opened by the current code at the moment the
    answers were taken; the committed file stays as it was written."""
    before = LEDGER.read_bytes()
    copy = tmp_path / "ledger.db"
    shutil.copyfile(LEDGER, copy)
    opened = open_service(Settings(store="sqlite", database=copy), clock=then)
    try:
        yield opened
    finally:
        opened.close()
    assert LEDGER.read_bytes() == before


def shown(service: AllocationService) -> dict[str, Any]:
    """What the read models show now, in the fixture's JSON shape."""
    store = service.store
    service.read_models.catch_up()
    capacity = store.get_capacity("default")
    assert capacity is not None
    rows = store.list_allocations(ListingQuery(limit=100))
    recorded = capacity_to_dict(capacity)
    # Added since the fixture was written: a pool of a history older than the
    # cross-tenant setting reads as `over_quota`, as a new pool starts.
    assert recorded.pop("cross_tenant_preemption") == "over_quota"
    made = {
        "capacity": recorded,
        "allocations": sorted(
            (allocation_to_dict(row) for row in rows),
            key=lambda row: str(row["allocation_id"]),
        ),
        "usage": [row.as_dict() for row in store.usage(UsageQuery(), NOW)],
    }
    answered: dict[str, Any] = json.loads(json.dumps(made, default=str))
    return answered


def test_the_fixture_holds_the_per_allocation_rule() -> None:
    """What the tests start from: allocations that paid for their servers,
    and a pool reserving 3 cores for 2 workers and two servers in use by 3."""
    resources = {row["job_id"]: row["resources"] for row in SHOWN["allocations"]}
    assert resources["one"] == {
        "cpu_millicores": 1250,
        "memory_mib": 1152,
        "workers": 1,
    }
    assert resources["again"] == {
        "cpu_millicores": 500,
        "memory_mib": 512,
        "workers": 0,
    }
    assert SHOWN["capacity"]["reserved"] == {
        "cpu_millicores": 3000,
        "memory_mib": 2816,
        "workers": 2,
    }
    assert SHOWN["idle_stopped"] == ["browser"]
    assert len(SHOWN["expired"]) == 1
    assert SHOWN["states_at_request"]["big"] == "failed"


def test_the_old_history_verifies_clean_and_shows_what_it_did(
    service: AllocationService,
) -> None:
    report = audit.verify(service)
    assert report.clean, report.as_dict()
    assert report.allocations == len(SHOWN["ids"])
    expected = {k: SHOWN[k] for k in ("capacity", "allocations", "usage")}
    assert shown(service) == expected
    pool = service.ledger.pool("default")
    assert pool.reserved == Resources(3_000, 2_816, 2)
    assert {s.name: s.cost for s in pool.servers.values()} == {
        "github": None,
        "browser": None,
    }


def test_rebuilt_read_models_show_what_it_did(service: AllocationService) -> None:
    service.projector.rebuild()
    expected = {k: SHOWN[k] for k in ("capacity", "allocations", "usage")}
    assert shown(service) == expected


def test_attaching_to_an_instance_of_the_old_rule_charges_it_once(
    service: AllocationService, then: ManualClock
) -> None:
    """github was started under the old rule (its cost in the allocations
    `one` and `three`): a new allocation attaching to it is charged nothing
    and the instance reserves its cost, once (ServerCharged); when `one` and
    `three` end, only the instance's cost stays, until it stops."""
    ledger = service.ledger
    before = ledger.pool("default").reserved
    attached = ledger.request(AllocationRequest("new", ("github",), 0)).allocation
    assert attached.resources == Resources()
    pool = ledger.pool("default")
    assert pool.reserved == before + GITHUB
    assert pool.servers["github"].cost == GITHUB
    newer = ledger.request(AllocationRequest("newer", ("github",), 0)).allocation
    assert ledger.pool("default").reserved == before + GITHUB
    charged = [
        e
        for e in ledger.events.get(pool_uuid("default"))
        if isinstance(e, Pool.ServerCharged)
    ]
    assert [(e.name, e.cost) for e in charged] == [("github", GITHUB.as_dict())]
    for allocation_id in (SHOWN["ids"]["one"], SHOWN["ids"]["three"]):
        ledger.release(allocation_id)
    for allocation_id in (attached.allocation_id, newer.allocation_id):
        ledger.release(allocation_id)
    # `again` still holds browser's cost (old rule); github is idle, holding its own
    assert ledger.pool("default").reserved == Resources(500, 512, 0) + GITHUB
    then.advance(61)
    assert [s.name for s in ledger.stop_idle_servers().stopped] == ["github"]
    assert ledger.pool("default").reserved == Resources(500, 512, 0)
    report = audit.verify(service)
    assert report.clean, report.as_dict()
    # ServerCharged is written only on such a history: the fast decoder
    # reads it as the mapper does (test_event_log.py checks every other event).
    assert "Pool.ServerCharged" in assert_decoder_agrees(ledger)
