"""Priority scheduling through MCP: queueing, grants, timeouts, queue policies,
preemption, quotas and who may set them, in memory on a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from mcp import Client
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from allocation_ledger.adapters.http.auth import Access, expand_scopes
from allocation_ledger.adapters.mcp.server import build_server
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.actors import SCHEDULER_ACTOR
from allocation_ledger.domain.clock import ManualClock
from tests.mcp_support import call, call_error, max_notification_id

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(client: Client) -> Client:
    """The shared client, on a pool of 4 workers."""
    await call(client, "set_capacity", workers=4)
    return client


async def ask(
    client: Client, job: str, workers: int, priority: str = "normal", **options: Any
) -> dict[str, Any]:
    return await call(
        client,
        "request_resources",
        job_id=job,
        mcp_servers=[],
        workers=workers,
        priority=priority,
        **options,
    )


async def state_of(client: Client, allocation: dict[str, Any]) -> str:
    detail = await call(
        client, "get_allocation", allocation_id=allocation["allocation_id"]
    )
    return str(detail["state"])


async def events_of(client: Client, allocation: dict[str, Any]) -> list[str]:
    history = await call(
        client, "get_allocation_history", allocation_id=allocation["allocation_id"]
    )
    return [e["event"] for e in history["events"]]


# -- queueing ------------------------------------------------------------------


async def test_a_queued_request_is_granted_by_the_release_in_the_same_transaction(
    client: Client, service: AllocationService
) -> None:
    holder = await ask(client, "holder", 3)
    waiting = await ask(client, "waiter", 2, wait=True)
    assert waiting["status"] == "queued"  # a result, not an error
    assert waiting["state"] == "queued"
    assert "error" not in waiting
    assert waiting["waiting_for"] == {
        "code": "insufficient_capacity",
        "dimension": "workers",
        "requested": 2,
        "available": 1,
    }
    assert waiting["queue_position"] == 1
    assert waiting["queue_deadline"] is None
    assert waiting["workers_allocated"] == []

    detail = await call(
        client, "get_allocation", allocation_id=waiting["allocation_id"]
    )
    assert detail["state"] == "queued"
    assert detail["resources"]["workers"] == 0  # holds nothing while queued
    assert detail["waiting_for"]["dimension"] == "workers"
    assert detail["tenant"] is None  # stdio: no tenant unless one is given
    queued = await call(client, "list_allocations", state="queued")
    assert [a["allocation_id"] for a in queued["allocations"]] == [
        waiting["allocation_id"]
    ]
    capacity = await call(client, "get_capacity")
    assert capacity["queue_length"] == 1
    assert capacity["allocated_workers"] == 3

    recorder = service.ledger.recorder
    real_insert = recorder.insert_events
    transactions: list[list[str]] = []

    def spy(stored_events: Sequence[Any], **kwargs: Any) -> Any:
        transactions.append([e.topic for e in stored_events])
        return real_insert(stored_events, **kwargs)

    recorder.insert_events = spy  # type: ignore[method-assign]
    try:
        released = await call(
            client, "release_resources", allocation_id=holder["allocation_id"]
        )
    finally:
        recorder.insert_events = real_insert  # type: ignore[method-assign]
    assert released["status"] == "released"
    assert released["workers_released"] == 3
    [topics] = transactions  # one transaction: the release and the grant
    assert "allocation-ledger:allocation:released" in topics
    assert "allocation-ledger:allocation:granted" in topics

    granted = await call(
        client, "get_allocation", allocation_id=waiting["allocation_id"]
    )
    assert granted["state"] == "active"
    assert "waiting_for" not in granted
    assert [w["port"] for w in granted["workers"]] == [8000, 8001]
    history = await call(
        client, "get_allocation_history", allocation_id=waiting["allocation_id"]
    )
    assert [(e["event"], e["state"]) for e in history["events"]] == [
        ("requested", "pending"),
        ("queued", "queued"),
        ("granted", "pending"),
        ("activated", "active"),
    ]
    assert history["events"][1]["changes"]["waiting_for"]["requested"] == 2
    assert history["events"][2]["actor"] == SCHEDULER_ACTOR
    assert history["events"][2]["changes"]["worker_ports"] == [8000, 8001]
    assert (await call(client, "get_queue"))["count"] == 0


async def test_a_queued_request_fails_with_queue_timeout_after_its_maximum_wait(
    client: Client, clock: ManualClock
) -> None:
    await ask(client, "holder", 4)
    waiting = await ask(client, "waiter", 1, wait=True, max_wait_seconds=60)
    assert waiting["status"] == "queued"
    deadline = datetime.fromisoformat(waiting["queue_deadline"])
    assert deadline == clock.now() + timedelta(seconds=60)

    clock.advance(30)
    await call(client, "cleanup_expired")
    assert await state_of(client, waiting) == "queued"
    clock.advance(31)
    await call(client, "cleanup_expired")

    detail = await call(
        client, "get_allocation", allocation_id=waiting["allocation_id"]
    )
    assert detail["state"] == "failed"
    assert detail["reason"]["code"] == "queue_timeout"
    assert detail["error"].startswith("Queue wait ran out")
    history = await call(
        client, "get_allocation_history", allocation_id=waiting["allocation_id"]
    )
    assert [e["event"] for e in history["events"]] == [
        "requested",
        "queued",
        "rejected",
    ]
    assert history["events"][-1]["actor"] == SCHEDULER_ACTOR
    assert (await call(client, "get_queue"))["queue"] == []


async def test_releasing_a_queued_request_cancels_it(client: Client) -> None:
    await ask(client, "holder", 4)
    waiting = await ask(client, "waiter", 1, wait=True)
    cancelled = await call(
        client, "release_resources", allocation_id=waiting["allocation_id"]
    )
    assert cancelled["status"] == "released"
    assert cancelled["workers_released"] == 0
    assert await events_of(client, waiting) == ["requested", "queued", "released"]
    assert (await call(client, "get_capacity"))["queue_length"] == 0


async def test_strict_keeps_the_queue_order_and_backfill_lets_smaller_ones_by(
    client: Client,
) -> None:
    await ask(client, "holder", 3)
    big = await ask(client, "big", 2, wait=True)
    small = await ask(client, "small", 1, wait=True)
    # It would fit, but under strict nobody passes the head of the queue.
    assert small["status"] == "queued"
    assert small["waiting_for"]["code"] == "queued_ahead"
    assert small["queue_position"] == 2
    refused = await ask(client, "impatient", 1)
    assert refused["status"] == "failed"
    assert refused["reason"]["code"] == "queued_ahead"
    assert refused["error"].startswith("Requests queued ahead come first")

    queue = await call(client, "get_queue")
    assert queue["queue_policy"] == "strict"
    assert [q["job_id"] for q in queue["queue"]] == ["big", "small"]

    changed = await call(client, "set_scheduling", queue_policy="backfill")
    assert changed["changed"] is True
    assert changed["queue_policy"] == "backfill"
    assert changed["aging_seconds"] == 600  # kept
    # The change itself serves the queue: the small one fits and goes by.
    assert changed["queue_length"] == 1
    assert await state_of(client, small) == "active"
    assert await state_of(client, big) == "queued"
    again = await call(client, "set_scheduling", queue_policy="backfill")
    assert again["changed"] is False


async def test_get_queue_orders_by_aged_priority_then_arrival(
    client: Client, clock: ManualClock
) -> None:
    await ask(client, "holder", 4, "critical")
    oldest_low = await ask(client, "low", 1, "low", wait=True, max_wait_seconds=3600)
    clock.advance(300)
    await ask(client, "normal-1", 2, wait=True)
    await ask(client, "high", 1, "high", wait=True, preempt=False)
    await ask(client, "normal-2", 1, wait=True)
    clock.advance(300)  # the low one has waited one aging period: it counts normal

    queue = await call(client, "get_queue")
    assert queue["count"] == 4
    assert [(q["position"], q["job_id"]) for q in queue["queue"]] == [
        (1, "high"),
        (2, "low"),  # aged to normal, and it arrived first
        (3, "normal-1"),
        (4, "normal-2"),
    ]
    low = queue["queue"][1]
    assert low["allocation_id"] == oldest_low["allocation_id"]
    assert (low["priority"], low["effective_priority"], low["effective_rank"]) == (
        "low",
        "normal",
        1,
    )
    assert low["waited_seconds"] == 600.0
    assert low["deadline"] == oldest_low["queue_deadline"]
    assert (low["workers"], low["cpu"], low["memory"]) == (1, 1.0, 2048)
    assert queue["aging_seconds"] == 600
    assert queue["preemption"] == {"critical": ["low", "normal"], "high": ["low"]}
    assert queue["available"]["workers"] == 0

    unknown = await call_error(client, "get_queue", {"pool": "elsewhere"})
    assert "pool 'elsewhere' not found" in unknown


# -- preemption ----------------------------------------------------------------


async def test_a_critical_request_preempts_the_youngest_lower_one(
    client: Client, clock: ManualClock
) -> None:
    older = await ask(client, "older-low", 2, "low")
    clock.advance(10)
    younger = await ask(client, "younger-low", 2, "low")
    normal_blocked = await ask(client, "normal", 1)
    assert normal_blocked["status"] == "failed"  # normal preempts nobody

    urgent = await ask(client, "urgent", 2, "critical")
    assert urgent["status"] == "active"
    assert urgent["preempted"] == [younger["allocation_id"]]

    victim = await call(
        client, "get_allocation", allocation_id=younger["allocation_id"]
    )
    assert victim["state"] == "preempted"
    assert victim["preempted_by"] == urgent["allocation_id"]
    assert victim["timestamps"]["released_at"] is not None
    assert await state_of(client, older) == "active"
    history = await call(
        client, "get_allocation_history", allocation_id=younger["allocation_id"]
    )
    assert [(e["event"], e["state"]) for e in history["events"]][-1] == (
        "preempted",
        "preempted",
    )
    assert history["events"][-1]["changes"] == {"preempted_by": urgent["allocation_id"]}
    listed = await call(client, "list_allocations", state="preempted")
    assert [(a["allocation_id"], a["preempted_by"]) for a in listed["allocations"]] == [
        (younger["allocation_id"], urgent["allocation_id"])
    ]
    again = await call(
        client, "release_resources", allocation_id=younger["allocation_id"]
    )
    assert again["status"] == "already_released"
    assert "preempted" in again["message"]


async def test_preempt_false_never_preempts(client: Client) -> None:
    low = await ask(client, "low", 4, "low")
    refused = await ask(client, "urgent", 2, "critical", preempt=False)
    assert refused["status"] == "failed"
    assert refused["preempted"] == []
    assert refused["reason"]["code"] == "insufficient_capacity"
    waits = await ask(client, "urgent", 2, "critical", preempt=False, wait=True)
    assert waits["status"] == "queued"
    assert await state_of(client, low) == "active"


async def test_a_dry_run_names_who_would_be_preempted_and_writes_nothing(
    client: Client, service: AllocationService
) -> None:
    low = await ask(client, "low", 4, "low")
    before = max_notification_id(service)
    trial = await ask(client, "urgent", 2, "critical", dry_run=True)
    assert trial["status"] == "dry_run"
    assert trial["preempted"] == [low["allocation_id"]]
    assert max_notification_id(service) == before
    assert await state_of(client, low) == "active"


async def test_set_scheduling_changes_the_preemption_rules(client: Client) -> None:
    normal = await ask(client, "normal", 4)
    rules = await call(client, "set_scheduling", preemption={"high": ["low", "normal"]})
    assert rules["preemption"] == {"high": ["low", "normal"]}
    assert rules["queue_policy"] == "strict"
    high = await ask(client, "high", 1, "high")
    assert high["preempted"] == [normal["allocation_id"]]
    off = await call(client, "set_scheduling", preemption={}, aging_seconds=60)
    assert off["preemption"] == {}
    assert off["aging_seconds"] == 60
    refused = await ask(client, "critical", 4, "critical")
    assert refused["status"] == "failed"
    text = await call_error(
        client, "set_scheduling", {"preemption": {"low": ["normal"]}}
    )
    assert "strictly lower" in text


# -- quotas --------------------------------------------------------------------


async def test_a_tenant_over_its_quota_is_refused_even_when_it_would_wait(
    client: Client,
) -> None:
    quota = await call(client, "set_quota", tenant="team-a", workers=2)
    assert quota["quota"] == {"cpu": None, "memory": None, "workers": 2}
    assert quota["changed"] is True
    first = await ask(client, "a1", 2, tenant="team-a")
    assert first["status"] == "active"
    over = await ask(client, "a2", 1, tenant="team-a", wait=True)
    assert over["status"] == "failed"  # waiting would not help
    assert over["reason"] == {
        "code": "quota_exceeded",
        "dimension": "workers",
        "requested": 1,
        "available": 0,
    }
    assert over["error"].startswith("Quota exceeded for workers")
    other = await ask(client, "b1", 1, tenant="team-b")
    assert other["status"] == "active"

    capacity = await call(client, "get_capacity")
    assert capacity["quotas"] == {"team-a": {"cpu": None, "memory": None, "workers": 2}}
    assert capacity["held_by_tenant"] == {
        "team-a": {"cpu": 2.0, "memory": 4096, "workers": 2},
        "team-b": {"cpu": 1.0, "memory": 2048, "workers": 1},
    }
    tighter = await call(client, "set_quota", tenant="team-a", cpu=1.5)
    assert tighter["quota"] == {"cpu": 1.5, "memory": None, "workers": 2}  # kept
    assert tighter["held"] == {"cpu": 2.0, "memory": 4096, "workers": 2}
    same = await call(client, "set_quota", tenant="team-a", cpu=1.5)
    assert same["changed"] is False
    cleared = await call(client, "set_quota", tenant="team-a", clear=True)
    assert cleared["quota"] is None
    assert cleared["quotas"] == {}
    assert (await ask(client, "a3", 1, tenant="team-a"))["status"] == "active"


# -- what can never be granted does not wait -----------------------------------


async def test_a_queued_request_bigger_than_the_shrunk_pool_fails_the_queue_moves_on(
    client: Client, service: AllocationService
) -> None:
    holder = await ask(client, "holder", 4)
    big = await ask(client, "big", 4, wait=True)
    small = await ask(client, "small", 1, wait=True)
    assert big["status"] == small["status"] == "queued"

    shrunk = await call(client, "set_capacity", workers=2)
    assert shrunk["changed"] is True
    failed = await call(client, "get_allocation", allocation_id=big["allocation_id"])
    assert failed["state"] == "failed"
    assert failed["reason"] == {
        "code": "exceeds_pool",
        "dimension": "workers",
        "requested": 4,
        "available": 2,
    }
    assert failed["error"] == (
        "Exceeds the pool: requested 4 workers, the pool has 2 in all"
    )
    history = await call(
        client, "get_allocation_history", allocation_id=big["allocation_id"]
    )
    assert [(e["event"], e["actor"]) for e in history["events"]][-1] == (
        "rejected",
        SCHEDULER_ACTOR,
    )
    queue = await call(client, "get_queue")
    assert [e["allocation_id"] for e in queue["queue"]] == [small["allocation_id"]]

    recorder = service.ledger.recorder
    real_insert = recorder.insert_events
    transactions: list[list[str]] = []

    def spy(stored_events: Sequence[Any], **kwargs: Any) -> Any:
        transactions.append([e.topic for e in stored_events])
        return real_insert(stored_events, **kwargs)

    recorder.insert_events = spy  # type: ignore[method-assign]
    try:
        await call(client, "release_resources", allocation_id=holder["allocation_id"])
    finally:
        recorder.insert_events = real_insert  # type: ignore[method-assign]
    [topics] = transactions  # the release and the grant, in one transaction
    assert "allocation-ledger:allocation:released" in topics
    assert "allocation-ledger:allocation:granted" in topics
    assert await state_of(client, small) == "active"
    assert (await call(client, "get_queue"))["count"] == 0
    newcomer = await ask(client, "newcomer", 1, "high")
    assert newcomer["status"] == "active"  # nothing left at the head to wait for


async def test_a_request_bigger_than_the_pool_that_would_wait_is_refused_exceeds_pool(
    client: Client,
) -> None:
    refused = await ask(client, "huge", 5, wait=True)
    assert refused["status"] == "failed"
    assert refused["reason"] == {
        "code": "exceeds_pool",
        "dimension": "workers",
        "requested": 5,
        "available": 4,
    }
    assert refused["error"] == (
        "Exceeds the pool: requested 5 workers, the pool has 4 in all"
    )


async def test_a_queued_request_over_its_lowered_quota_fails_and_the_queue_moves_on(
    client: Client,
) -> None:
    await ask(client, "holder", 3)
    team_a = await ask(client, "a", 3, tenant="team-a", wait=True)
    team_b = await ask(client, "b", 1, tenant="team-b", wait=True)
    assert team_a["status"] == team_b["status"] == "queued"

    await call(client, "set_quota", tenant="team-a", workers=2)
    failed = await call(client, "get_allocation", allocation_id=team_a["allocation_id"])
    assert failed["state"] == "failed"
    assert failed["reason"] == {
        "code": "quota_exceeded",
        "dimension": "workers",
        "requested": 3,
        "available": 2,
    }
    assert await state_of(client, team_b) == "active"
    assert (await call(client, "get_queue"))["count"] == 0


async def test_a_queued_request_whose_quota_is_only_used_up_now_keeps_waiting(
    client: Client,
) -> None:
    own = await ask(client, "a-holder", 2, tenant="team-a")
    other = await ask(client, "b-holder", 2, tenant="team-b")
    waiting = await ask(client, "a-waits", 2, tenant="team-a", wait=True)
    await call(client, "set_quota", tenant="team-a", workers=3)
    assert await state_of(client, waiting) == "queued"
    await call(client, "release_resources", allocation_id=other["allocation_id"])
    assert await state_of(client, waiting) == "queued"
    await call(client, "release_resources", allocation_id=own["allocation_id"])
    assert await state_of(client, waiting) == "active"


# -- granted or preempted, never both in one decision ---------------------------


async def test_room_freed_by_expiry_goes_by_rank_to_the_newcomer_and_the_queue(
    client: Client, clock: ManualClock
) -> None:
    x = await ask(client, "x", 4, ttl_seconds=60)
    q1 = await ask(client, "q1", 2, wait=True)
    q2 = await ask(client, "q2", 2, wait=True)
    clock.advance(61)
    urgent = await ask(client, "urgent", 2, "critical")
    assert urgent["status"] == "active"
    assert urgent["expired_first"] == [x["allocation_id"]]
    assert urgent["preempted"] == []
    assert await state_of(client, q1) == "active"
    assert await state_of(client, q2) == "queued"
    assert await events_of(client, q1) == [
        "requested",
        "queued",
        "granted",
        "activated",
    ]


# -- a retry is the same request ----------------------------------------------


@pytest.mark.parametrize(
    ("changes", "wording"),
    [
        ({"wait": True}, "wait was false, now true"),
        (
            {"wait": True, "max_wait_seconds": 600},
            "wait was false, now true; max_wait_seconds was null, now 600",
        ),
        ({"preempt": False}, "preempt was true, now false"),
        ({"dry_run": True}, "dry_run was false, now true"),
        (
            {"mcp_servers": ["github"], "wait": True},
            'mcp_servers was [], now ["github"]; wait was false, now true',
        ),
    ],
)
async def test_a_retry_with_other_arguments_is_an_error_naming_each_with_both_values(
    client: Client,
    service: AllocationService,
    changes: dict[str, Any],
    wording: str,
) -> None:
    arguments: dict[str, Any] = {
        "job_id": "j",
        "mcp_servers": [],
        "workers": 1,
        "request_id": "r-1",
        "tenant": "team-a",
    }
    first = await call(client, "request_resources", **arguments)
    history = await call(
        client, "get_allocation_history", allocation_id=first["allocation_id"]
    )
    recorded = history["events"][0]["changes"]
    assert (recorded["tenant"], recorded["wait"], recorded["preempt"]) == (
        "team-a",
        False,
        True,
    )
    assert recorded["max_wait_seconds"] is None
    before = max_notification_id(service)
    error = await call_error(client, "request_resources", {**arguments, **changes})
    assert (
        "request_id 'r-1' was already used for allocation "
        f"{first['allocation_id']} with other arguments, so this is not a retry "
        "of it: "
    ) in error
    assert wording in error
    assert max_notification_id(service) == before  # nothing changed
    again = await call(client, "request_resources", **arguments)
    assert again["replayed"] is True


async def test_a_request_id_belongs_to_its_tenant(
    client: Client, service: AllocationService
) -> None:
    """The same request_id for another tenant is another request: neither a
    retry of the first nor refused because of it."""
    async with as_token(service, "agent-7", "write") as writer:
        first = await call(
            writer, "request_resources", job_id="j", mcp_servers=[], request_id="r-9"
        )
        assert first["status"] == "active"
    async with as_token(service, "agent-8", "write") as other:
        second = await call(
            other,
            "request_resources",
            job_id="other-job",
            mcp_servers=[],
            workers=2,
            request_id="r-9",
        )
    assert second["replayed"] is False
    assert second["allocation_id"] != first["allocation_id"]
    assert (second["tenant"], second["workers_allocated"] != []) == ("agent-8", True)
    # Over stdio (no tenant unless one is named) it is a third request; naming
    # agent-7 retries agent-7's.
    local = await call(
        client, "request_resources", job_id="local", mcp_servers=[], request_id="r-9"
    )
    assert local["replayed"] is False
    assert local["tenant"] is None
    assert (
        len({first["allocation_id"], second["allocation_id"], local["allocation_id"]})
        == 3
    )
    again = await call(
        client,
        "request_resources",
        job_id="j",
        mcp_servers=[],
        request_id="r-9",
        tenant="agent-7",
    )
    assert (again["replayed"], again["allocation_id"]) == (True, first["allocation_id"])


# -- who may do what -----------------------------------------------------------


@asynccontextmanager
async def as_token(
    service: AllocationService, subject: str, scope: str
) -> AsyncIterator[Client]:
    """A client whose calls carry a verified token, as over HTTP."""
    token = AccessToken(
        token="t", client_id=subject, subject=subject, scopes=expand_scopes([scope])
    )
    reset = auth_context_var.set(AuthenticatedUser(token))
    try:
        server = build_server(service, access=Access(require_token=True))
        async with Client(server) as connected:
            yield connected
    finally:
        auth_context_var.reset(reset)


async def test_only_admins_set_quotas_and_scheduling_or_name_another_tenant(
    service: AllocationService,
) -> None:
    async with as_token(service, "agent-7", "write") as writer:
        before = max_notification_id(service)
        for tool, arguments in (
            ("set_quota", {"tenant": "agent-7", "workers": 9}),
            ("set_scheduling", {"queue_policy": "backfill"}),
        ):
            text = await call_error(writer, tool, arguments)
            assert "needs the 'admin' scope" in text, tool
        text = await call_error(
            writer,
            "request_resources",
            {"job_id": "j", "mcp_servers": [], "tenant": "team-b"},
        )
        assert "needs the 'admin' scope" in text
        assert max_notification_id(service) == before

        await call(writer, "request_resources", job_id="j", mcp_servers=[], workers=1)
        await call(
            writer,
            "request_resources",
            job_id="j",
            mcp_servers=[],
            workers=3,
            tenant="agent-7",  # naming oneself needs no admin
        )
        waiting = await call(
            writer, "request_resources", job_id="j", mcp_servers=[], wait=True
        )  # only MCP servers: it fits, so it is not queued
        assert waiting["status"] == "active"
        capacity = await call(writer, "get_capacity")
        # The token's subject by default.
        assert capacity["held_by_tenant"] == {
            "agent-7": {"cpu": 4.0, "memory": 8192, "workers": 4}
        }
        queued = await call(
            writer,
            "request_resources",
            job_id="j",
            mcp_servers=[],
            workers=7,
            wait=True,
        )
        assert queued["status"] == "queued"
        queue = await call(writer, "get_queue")  # read is enough
        assert [q["tenant"] for q in queue["queue"]] == ["agent-7"]
        await call(writer, "release_resources", allocation_id=queued["allocation_id"])

    async with as_token(service, "ops-admin", "admin") as admin:
        quota = await call(admin, "set_quota", tenant="agent-7", workers=4)
        assert quota["held"]["workers"] == 4
        for_other = await call(
            admin,
            "request_resources",
            job_id="j",
            mcp_servers=[],
            workers=1,
            tenant="agent-7",
        )
        assert for_other["reason"]["code"] == "quota_exceeded"
        history = await call(
            admin, "get_allocation_history", allocation_id=for_other["allocation_id"]
        )
        assert history["events"][0]["actor"] == "ops-admin"


async def test_the_allocation_records_its_tenant(client: Client) -> None:
    made = await ask(client, "a1", 1, tenant="team-a")
    assert made["tenant"] == "team-a"
    detail = await call(client, "get_allocation", allocation_id=made["allocation_id"])
    assert detail["tenant"] == "team-a"
    listed = await call(client, "list_allocations")
    assert listed["allocations"][0]["tenant"] == "team-a"
    history = await call(
        client, "get_allocation_history", allocation_id=made["allocation_id"]
    )
    assert history["events"][0]["changes"]["tenant"] == "team-a"
