"""The change feed: what a server learns of the ledger's changes from the log,
its own writes and those of another server on the same database alike."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.http.auth import Access
from allocation_ledger.adapters.mcp.server import change_feed
from allocation_ledger.adapters.mcp.tools.mcp_servers import McpServerTools
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.pool import DEFAULT_POOL
from allocation_ledger.domain.server_process import ProcessReport
from allocation_ledger.domain.values import AllocationRequest
from allocation_ledger.projections.changes import Changes, ServerChanged, ServerNow
from tests.ledger_support import OpenService


def test_a_follower_reports_each_changed_allocation_and_pool_once(
    ledger_service: AllocationService,
) -> None:
    feed = change_feed(ledger_service)
    follower = feed.follower
    assert not follower.poll()  # the first poll starts at the end
    ledger = ledger_service.ledger
    first = ledger.request(
        AllocationRequest(job_id="a", servers=("github",), workers=1), tenant="acme"
    )
    second = ledger.request(AllocationRequest(job_id="b", workers=1), tenant="zeta")
    ledger.release(first.allocation.allocation_id)

    changes = follower.poll()

    assert [c.allocation_id for c in changes.allocations] == [
        first.allocation.allocation_id,
        second.allocation.allocation_id,
    ]
    first_change = changes.allocation(first.allocation.allocation_id)
    assert first_change is not None
    assert (first_change.state, first_change.tenant, first_change.pool) == (
        "released",
        "acme",
        "default",
    )
    assert [p.pool for p in changes.pools] == ["default"]
    assert changes.pools[0].capacity.reserved.workers == 1
    assert not follower.poll()  # nothing new: nothing reported again


def test_a_follower_reports_a_changed_server_as_get_mcp_status_shows_it(
    ledger_service: AllocationService,
) -> None:
    feed = change_feed(ledger_service)
    follower = feed.follower
    ledger = ledger_service.ledger
    made = ledger.request(AllocationRequest(job_id="a", servers=("github",)))
    follower.start_at_end()
    [slot] = made.allocation.servers
    report = ProcessReport("exited", DEFAULT_POOL, "github", slot.port, None, {})
    ledger.record_server_process(report)

    changes = follower.poll()

    shown = McpServerTools(ledger_service, Access(require_token=False)).status(
        "github", DEFAULT_POOL
    )
    assert changes.servers == (
        ServerChanged(
            DEFAULT_POOL, "github", ServerNow(shown.status, shown.endpoint, None)
        ),
    )
    assert shown.endpoint is not None and shown.status == "running"


def test_a_follower_learns_of_another_servers_writes(
    open_services: OpenService, tmp_path: Path
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "ledger.db")
    here = open_services(settings)
    there = open_services(settings)
    follower = change_feed(here).follower
    follower.start_at_end()
    # The other server folds its own events into the shared read models first.
    result = there.ledger.request(AllocationRequest(job_id="elsewhere", workers=2))
    there.read_models.catch_up()

    changes = follower.poll()

    change = changes.allocation(result.allocation.allocation_id)
    assert change is not None
    assert change.state == "active"
    assert change.view.workers_requested == 2


@pytest.mark.anyio
async def test_the_feed_tells_its_listeners_when_nudged(
    ledger_service: AllocationService,
) -> None:
    feed = change_feed(ledger_service)
    feed.interval = 30  # only a nudge wakes it within the test
    heard: list[Changes] = []
    told = anyio.Event()

    def listener(changes: Changes) -> None:
        heard.append(changes)
        told.set()

    async with anyio.create_task_group() as group:
        await anyio.to_thread.run_sync(feed.follower.start_at_end)
        group.start_soon(feed.run)
        with feed.listening(listener):
            await anyio.sleep(0.05)
            result = await anyio.to_thread.run_sync(
                ledger_service.ledger.request, AllocationRequest(job_id="j")
            )
            feed.nudge()
            with anyio.fail_after(5):
                await told.wait()
        group.cancel_scope.cancel()

    assert [c.allocation_id for c in heard[0].allocations] == [
        result.allocation.allocation_id
    ]


@pytest.mark.anyio
async def test_a_feed_nobody_wants_only_keeps_its_place(
    ledger_service: AllocationService,
) -> None:
    """While no listener wants changes, polling moves to the log's end and
    tells nobody (nor reads the read models); once wanted, it reports what
    changed from there."""
    feed = change_feed(ledger_service)
    heard: list[Changes] = []
    wanted = False
    unsubscribe = feed.subscribe(heard.append, wanted=lambda: wanted)
    await feed.poll()
    ledger = ledger_service.ledger
    ignored = ledger.request(AllocationRequest(job_id="ignored"))
    caught_up = ledger_service.projector.reached
    assert not await feed.poll()
    assert ledger_service.projector.reached == caught_up  # no catch-up for it
    wanted = True
    told = ledger.request(AllocationRequest(job_id="told"))
    changes = await feed.poll()
    unsubscribe()

    ids = [c.allocation_id for c in changes.allocations]
    assert ids == [told.allocation.allocation_id]
    assert ignored.allocation.allocation_id not in ids
    assert heard == [changes]
