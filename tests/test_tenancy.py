"""Tenants in the ledger and its read models: commands confined to a tenant
change nothing of another's, request ids belong to their tenant, and the
read models filter by tenant on an index (in memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken

from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.http.auth import TENANT_CLAIM, Access, expand_scopes
from allocation_ledger.adapters.http.tokens import TOKEN_LIST
from allocation_ledger.adapters.mcp.server import change_feed
from allocation_ledger.adapters.mcp.tools.allocations import AllocationTools
from allocation_ledger.adapters.storage.service import (
    AllocationService,
    init_database,
    open_service,
)
from allocation_ledger.adapters.storage.sql_read_models import SQLReadModels
from allocation_ledger.domain.allocation_ids import allocation_id_for_request
from allocation_ledger.domain.clock import ManualClock
from allocation_ledger.domain.errors import AllocationNotFoundError
from allocation_ledger.domain.ledger import Ledger
from allocation_ledger.domain.tenancy import Visibility
from allocation_ledger.domain.values import AllocationRequest, AllocationState
from allocation_ledger.projections.store import InMemoryReadModels, ListingQuery
from allocation_ledger.projections.usage import UsageQuery
from tests.conftest import ledger_settings
from tests.ledger_support import OpenService, RecordingProvisioner, last_position
from tests.postgres import postgres_schema, postgres_settings
from tests.test_tenant_request_ids import LEDGER, MADE

__all__ = ["postgres_schema"]

TEAM_A = Visibility("team-a")


def ask(
    ledger: Ledger, job_id: str, tenant: str | None, workers: int = 1, **more: Any
) -> str:
    made = ledger.request(
        AllocationRequest(job_id, workers=workers, ttl_seconds=60),
        tenant=tenant,
        **more,
    )
    return made.allocation.allocation_id


@dataclass
class TeardownLater(RecordingProvisioner):
    """Tears down outside the ledger's transactions (not `instant`)."""

    instant = False


# -- commands confined to a tenant ---------------------------------------------


@pytest.mark.parametrize("instant", [True, False], ids=["instant", "teardown-later"])
def test_a_tenant_can_neither_release_nor_renew_anothers_allocation(
    open_ledger_service: OpenService, manual_clock: ManualClock, instant: bool
) -> None:
    provisioner = RecordingProvisioner() if instant else TeardownLater()
    service = open_ledger_service(provisioner=provisioner)
    ledger = service.ledger
    assert ledger.provisions_instantly is instant
    theirs = ask(ledger, "b-job", "team-b")
    manual_clock.advance(61)  # its lease ran out: renewing would expire it
    before = last_position(ledger)
    for attempt in (
        lambda: ledger.release(theirs, actor="a-agent", visibility=TEAM_A),
        lambda: ledger.renew(theirs, 600, actor="a-agent", visibility=TEAM_A),
        lambda: ledger.renew(theirs, actor="a-agent", visibility=TEAM_A),
    ):
        with pytest.raises(AllocationNotFoundError) as raised:
            attempt()
        assert str(raised.value) == f"allocation {theirs!r} not found"
    assert last_position(ledger) == before
    assert provisioner.deprovisioned == []
    assert ledger.allocation(theirs).state is AllocationState.ACTIVE
    # Its own tenant may; so may every tenant's view (admin).
    mine = ask(ledger, "a-job", "team-a")
    assert ledger.release(mine, visibility=TEAM_A).result.status == "released"
    # Its lease ran out: releasing it expires it, as a sweep would.
    assert ledger.release(theirs).result.status == "already_released"
    assert ledger.allocation(theirs).state is AllocationState.EXPIRED


def test_a_request_id_belongs_to_its_tenant(ledger_service: AllocationService) -> None:
    ledger = ledger_service.ledger
    request = AllocationRequest("nightly", workers=1)
    made = {
        tenant: ledger.request(request, request_id="r-1", tenant=tenant)
        for tenant in ("team-a", "team-b", None)
    }
    ids = {tenant: r.allocation.allocation_id for tenant, r in made.items()}
    assert len(set(ids.values())) == 3
    for tenant, allocation_id in ids.items():
        assert allocation_id == allocation_id_for_request("default", "r-1", tenant)
        again = ledger.request(request, request_id="r-1", tenant=tenant)
        assert (again.replayed, again.allocation.allocation_id) == (True, allocation_id)
    # Another pool is another request too.
    assert allocation_id_for_request("gpu", "r-1", "team-a") != ids["team-a"]


def test_an_old_request_of_another_tenant_neither_replays_nor_blocks(
    tmp_path: Path,
) -> None:
    """On a ledger written before request ids belonged to tenants, an id of
    the old derivation is found by its own tenant's retry only."""
    copy = tmp_path / "ledger.db"
    shutil.copyfile(LEDGER, copy)
    service = open_service(Settings(store="sqlite", database=copy))
    try:
        ledger = service.ledger
        request = AllocationRequest("alice-nightly", workers=1, ttl_seconds=2_592_000)
        alices = MADE["alice"]["nightly-1"]
        replay = ledger.request(request, request_id="nightly-1", tenant="alice")
        assert (replay.replayed, replay.allocation.allocation_id) == (True, alices)
        for tenant in ("bob", None):
            other = ledger.request(request, request_id="nightly-1", tenant=tenant)
            assert other.replayed is False
            assert other.allocation.allocation_id == allocation_id_for_request(
                "default", "nightly-1", tenant
            )
    finally:
        service.close()


# -- tokens --------------------------------------------------------------------


def test_a_tokens_tenant_is_its_subject_unless_given() -> None:
    entries = TOKEN_LIST.validate_python(
        [
            {"subject": "agent-7", "scopes": ["write"], "token": "x" * 16},
            {
                "subject": "agent-8",
                "scopes": ["read"],
                "token": "y" * 16,
                "tenant": "t",
            },
        ]
    )
    assert [e.tenant_name for e in entries] == ["agent-7", "t"]
    for bad in ("", "team a", "x" * 129, "-leading"):
        with pytest.raises(ValueError, match="tenant"):
            TOKEN_LIST.validate_python(
                [{"subject": "s", "scopes": ["read"], "token": "z" * 16, "tenant": bad}]
            )


# -- cleanup_expired and expired_first name only what the caller may see -------


@contextmanager
def token_of(subject: str, tenant: str, scope: str) -> Iterator[None]:
    """Calls made meanwhile carry a verified token, as over HTTP."""
    token = AccessToken(
        token="t",
        client_id=subject,
        subject=subject,
        scopes=expand_scopes([scope]),
        claims={TENANT_CLAIM: tenant},
    )
    reset = auth_context_var.set(AuthenticatedUser(token))
    try:
        yield
    finally:
        auth_context_var.reset(reset)


def allocation_tools(service: AllocationService) -> AllocationTools:
    """The tools themselves, called without a server around them, so that no
    background sweep expires anything first."""
    return AllocationTools(service, Access(require_token=True), change_feed(service))


@pytest.mark.anyio
async def test_cleanup_names_only_the_callers_tenants_allocations(
    service: AllocationService, clock: ManualClock
) -> None:
    ours = ask(service.ledger, "a-job", "team-a")
    theirs = ask(service.ledger, "b-job", "team-b")
    clock.advance(61)
    with token_of("a-agent", "team-a", "write"):
        cleaned = await allocation_tools(service).cleanup_expired()
    assert (cleaned.cleaned_up, cleaned.count) == ([ours], 1)
    # The other tenant's expired all the same.
    assert service.ledger.allocation(theirs).state is AllocationState.EXPIRED


@pytest.mark.anyio
async def test_expired_first_names_only_the_callers_tenants_allocations(
    service: AllocationService, clock: ManualClock
) -> None:
    theirs = ask(service.ledger, "b-job", "team-b", workers=9)
    ours = ask(service.ledger, "a-job", "team-a", workers=1)
    clock.advance(61)  # both due, not yet swept
    with token_of("a-agent", "team-a", "write"):
        made = await allocation_tools(service).request_resources(
            job_id="a-next", mcp_servers=[], workers=10
        )
    assert made.status == "active"
    assert made.expired_first == [ours]
    assert service.ledger.allocation(theirs).state is AllocationState.EXPIRED


# -- the read models filter by tenant on an index --------------------------------


def three_tenants(ledger: Ledger) -> dict[str | None, set[str]]:
    """Allocations of team-a, team-b and none, in several states."""
    made: dict[str | None, set[str]] = {}
    for n, tenant in enumerate(["team-a", "team-b", None] * 3):
        allocation_id = ask(ledger, f"job-{n % 2}", tenant)
        made.setdefault(tenant, set()).add(allocation_id)
        if n < 3:  # the first of each
            ledger.release(allocation_id)
    return made


def listing_ids(service: AllocationService, query: ListingQuery) -> set[str]:
    return {v.allocation_id for v in service.read_models.allocations(query)}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def any_store(
    request: pytest.FixtureRequest, open_services: OpenService, tmp_path: Path
) -> AllocationService:
    if request.param == "postgres":
        settings = postgres_settings(request.getfixturevalue("postgres_schema"))
        init_database(settings)
        return open_services(settings)
    return open_services(ledger_settings(request.param, tmp_path))


def test_listings_and_usage_filter_by_tenant(
    any_store: AllocationService, manual_clock: ManualClock
) -> None:
    made = three_tenants(any_store.ledger)
    manual_clock.advance(30)
    for tenant in ("team-a", "team-b"):
        assert listing_ids(any_store, ListingQuery(tenant=tenant)) == made[tenant]
        active = listing_ids(
            any_store, ListingQuery(tenant=tenant, state=AllocationState.ACTIVE)
        )
        assert active < made[tenant]
        assert len(active) == 2
        paged = any_store.read_models.allocations(ListingQuery(tenant=tenant, limit=1))
        assert len(paged) == 1
    assert listing_ids(any_store, ListingQuery(tenant="nobody")) == set()
    assert len(listing_ids(any_store, ListingQuery())) == 9  # None: no filter

    any_store.read_models.catch_up()
    now = manual_clock.now()
    everyone = any_store.store.usage(UsageQuery(), now)
    team_a = any_store.store.usage(UsageQuery(tenant="team-a"), now)
    assert sum(sum(r.allocations.values()) for r in everyone) == 9
    assert sum(sum(r.allocations.values()) for r in team_a) == 3
    assert {r.job_id for r in team_a} == {"job-0", "job-1"}
    # The same in memory, folded from the same log.
    fresh = InMemoryReadModels()
    any_store.projector.__class__(
        any_store.ledger.recorder, any_store.projector.decode, fresh
    ).catch_up()
    assert [r.as_dict() for r in fresh.usage(UsageQuery(tenant="team-a"), now)] == [
        r.as_dict() for r in team_a
    ]


class CountingQuery(ListingQuery):
    """A listing query that counts the rows it is matched against."""

    examined: ClassVar[list[str]] = []

    def matches(self, view: Any) -> bool:
        self.examined.append(view.allocation_id)
        return super().matches(view)


def test_in_memory_a_tenants_listing_examines_that_tenants_rows_only(
    open_services: OpenService, tmp_path: Path
) -> None:
    service = open_services(ledger_settings("memory", tmp_path))
    made = three_tenants(service.ledger)
    service.read_models.catch_up()
    CountingQuery.examined.clear()
    found = service.store.list_allocations(CountingQuery(tenant="team-b"))
    assert {v.allocation_id for v in found} == made["team-b"]
    assert set(CountingQuery.examined) == made["team-b"]


class ExplainingCursor:
    """Runs the query plan of every read of the allocation table before it."""

    def __init__(self, cursor: Any, explain: str, plans: list[str]) -> None:
        self._cursor, self._explain, self._plans = cursor, explain, plans

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if sql.lstrip().startswith("SELECT") and "FROM ledger_allocation_view" in sql:
            self._cursor.execute(self._explain + sql, params)
            self._plans.append(
                "\n".join(str(row) for row in self._cursor.fetchall()) + "\n" + sql
            )
        return self._cursor.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


@contextmanager
def explained(store: SQLReadModels, postgres: bool) -> Iterator[list[str]]:
    """The plans of the allocation-table reads the store makes meanwhile.

    On PostgreSQL sequential scans are discouraged for them: with a handful of
    rows a scan is cheapest, and the question is whether an index serves.
    """
    dialect = store.dialect
    original = dialect.transaction
    plans: list[str] = []
    explain = "EXPLAIN " if postgres else "EXPLAIN QUERY PLAN "

    @contextmanager
    def transaction(*, write: bool) -> Iterator[Any]:
        with original(write=write) as cursor:
            if postgres:
                cursor.execute("SET LOCAL enable_seqscan = off")
            yield ExplainingCursor(cursor, explain, plans)

    dialect.transaction = transaction  # type: ignore[method-assign]
    try:
        yield plans
    finally:
        dialect.transaction = original  # type: ignore[method-assign]


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_tenants_listing_and_usage_read_the_tenant_index(
    store: str,
    request: pytest.FixtureRequest,
    open_services: OpenService,
    tmp_path: Path,
) -> None:
    if store == "postgres":
        settings = postgres_settings(request.getfixturevalue("postgres_schema"))
        init_database(settings)
    else:
        settings = ledger_settings("sqlite", tmp_path)
    service = open_services(settings)
    three_tenants(service.ledger)
    service.read_models.catch_up()
    assert isinstance(service.store, SQLReadModels)
    now = service.ledger.clock.now() + timedelta(seconds=1)
    with explained(service.store, postgres=store == "postgres") as plans:
        service.store.list_allocations(ListingQuery(tenant="team-a"))
        service.store.usage(UsageQuery(tenant="team-a"), now)
    assert len(plans) == 3  # the listing; usage's sums and counts
    for plan in plans:
        assert "ledger_allocation_view_tenant" in plan, plan
