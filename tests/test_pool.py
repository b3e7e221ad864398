"""The Pool aggregate: capacity arithmetic, ports, MCP servers, lease order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from allocation_ledger.domain.pool import Pool, pool_uuid
from allocation_ledger.domain.pool_settings import (
    DEFAULT_CAPACITY,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_WORKER_SIZE,
    PoolSettings,
)
from allocation_ledger.domain.ports import (
    MCP_PORT_FIRST,
    MCP_PORT_LAST,
    WORKER_PORT_FIRST,
)
from allocation_ledger.domain.values import (
    INSUFFICIENT_CAPACITY,
    AllocationRequest,
    Dimension,
    Rejection,
    Resources,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def new_pool(settings: PoolSettings | None = None) -> Pool:
    return Pool.create("default", settings or PoolSettings(), at=T0, actor="local")


def reserve(
    pool: Pool,
    allocation_id: str,
    *,
    workers: int = 0,
    servers: tuple[str, ...] = (),
    ttl: int = 3600,
    now: float = 0,
) -> tuple[tuple[int, ...], tuple[tuple[str, int, bool], ...]]:
    request = AllocationRequest("job", servers, workers=workers, ttl_seconds=ttl)
    ports = pool.reserve(
        allocation_id,
        request,
        expires_at=at(now + ttl),
        at=at(now),
        actor="alice",
    )
    return ports.worker_ports, ports.servers


# -- defaults and arithmetic -----------------------------------------------------------


def test_the_original_defaults() -> None:
    assert Resources(16_000, 32_768, 10) == DEFAULT_CAPACITY
    assert Resources(1_000, 2_048, 1) == DEFAULT_WORKER_SIZE
    assert DEFAULT_IDLE_TIMEOUT_SECONDS == 300
    assert (MCP_PORT_FIRST, MCP_PORT_LAST, WORKER_PORT_FIRST) == (9000, 9099, 8000)
    pool = new_pool()
    assert pool.id == pool_uuid("default")
    assert pool.name == "default"
    assert pool.settings.capacity == DEFAULT_CAPACITY
    assert pool.available == DEFAULT_CAPACITY
    assert pool.free_mcp_ports() == 100


def test_a_request_costs_its_workers_and_nothing_for_servers_by_default() -> None:
    settings = PoolSettings()
    request = AllocationRequest("job", ("github", "filesystem"), workers=3)
    assert settings.workers_for(request) == Resources(3_000, 6_144, 3)
    assert settings.in_empty_pool(request) == Resources(3_000, 6_144, 3)
    assert settings.workers_for(AllocationRequest("job", ("github",))) == Resources()


def test_a_server_costs_what_is_configured_for_its_name() -> None:
    settings = PoolSettings(server_costs={"browser": Resources(500, 1_024, 0)})
    assert settings.cost_of_server("browser") == Resources(500, 1_024, 0)
    assert settings.cost_of_server("github") == Resources()
    request = AllocationRequest("job", ("browser", "github"), workers=1)
    assert settings.workers_for(request) == Resources(1_000, 2_048, 1)
    assert settings.in_empty_pool(request) == Resources(1_500, 3_072, 1)


# -- what an MCP server instance costs ---------------------------------------------

GITHUB = Resources(250, 128, 0)
BROWSER = Resources(500, 1_024, 0)


def costly_pool(capacity: Resources = DEFAULT_CAPACITY) -> Pool:
    return new_pool(
        PoolSettings(
            capacity=capacity,
            server_costs={"github": GITHUB, "browser": BROWSER},
            idle_timeout_seconds=60,
        )
    )


def test_ten_allocations_sharing_one_server_hold_its_cost_once() -> None:
    """The issue's example: ten allocations on one `github` of 0.25 core hold
    0.25 core for it, not 2.5; each allocation holds only its workers."""
    pool = costly_pool()
    for i in range(10):
        reserve(pool, f"alloc-{i:012d}", workers=1, servers=("github",))
    assert pool.reserved == Resources(10_000 + 250, 10 * 2_048 + 128, 10)
    assert all(
        r.resources == Resources(1_000, 2_048, 1) for r in pool.reservations.values()
    )
    started = [e for e in pool.collect_events() if isinstance(e, Pool.ServerStarted)]
    assert [(e.name, e.cost) for e in started] == [("github", GITHUB.as_dict())]
    assert pool.servers["github"].cost == GITHUB


def test_an_idle_instance_holds_its_cost_until_it_stops() -> None:
    pool = costly_pool()
    reserve(pool, "alloc-000000000001", workers=1, servers=("github",))
    pool.free("alloc-000000000001", "released", at=at(1), actor="bob")
    assert pool.reserved == GITHUB  # idle, still running
    assert pool.stop_idle_servers(at(61), actor="sweeper")
    assert pool.reserved == Resources()
    stopped = [e for e in pool.collect_events() if isinstance(e, Pool.ServerStopped)]
    assert [(e.name, e.reason, e.cost) for e in stopped] == [
        ("github", "idle", GITHUB.as_dict())
    ]


def test_a_request_needs_the_cost_only_of_servers_not_running() -> None:
    """1 core free and github running: a request of github and browser
    needs browser's 0.5 core only; one of github alone needs nothing more."""
    pool = costly_pool(Resources(1_000 + 250, 32_768, 10))
    reserve(pool, "alloc-000000000001", servers=("github",))
    reserve(pool, "alloc-000000000002", workers=1)  # 1 core: 0 left
    assert pool.shortfall(AllocationRequest("job", ("github",))) is None
    assert pool.shortfall(AllocationRequest("job", ("github", "browser"))) == (
        Rejection(INSUFFICIENT_CAPACITY, Dimension.CPU, 500, 0)
    )


def test_idle_instances_are_reclaimed_longest_idle_first_only_as_needed() -> None:
    """Three idle instances of 0.5, 0.25 and 0.5 core, idle in that order,
    and nothing else free: a worker of 0.5 core stops the longest idle only;
    one of 0.75 core stops the first two."""
    for worker_cpu, expected in ((500, ["a"]), (750, ["a", "b"])):
        pool = new_pool(
            PoolSettings(
                capacity=Resources(1_250, 32_768, 10),
                worker_size=Resources(worker_cpu, 1, 1),
                server_costs={"a": BROWSER, "b": GITHUB, "c": BROWSER},
            )
        )
        for i, name in enumerate(("a", "b", "c")):
            reserve(pool, f"alloc-00000000000{i}", servers=(name,), now=i)
            pool.free(f"alloc-00000000000{i}", "released", at=at(i), actor="bob")
        assert pool.available.cpu_millicores == 0
        pool.collect_events()
        reserve(pool, "alloc-000000000009", workers=1, now=9)
        stopped = [
            e for e in pool.collect_events() if isinstance(e, Pool.ServerStopped)
        ]
        assert [(e.name, e.reason) for e in stopped] == [
            (name, "reclaimed") for name in expected
        ]
        assert sorted(pool.servers) == sorted({"a", "b", "c"} - set(expected))


def test_a_request_short_even_after_reclaiming_is_refused_with_all_it_could_have() -> (
    None
):
    pool = costly_pool(Resources(1_000, 32_768, 10))
    reserve(pool, "alloc-000000000001", servers=("browser",))
    pool.free("alloc-000000000001", "released", at=at(1), actor="bob")
    assert pool.available.cpu_millicores == 500
    # available counts the idle browser it would reclaim: 0.5 + 0.5 core
    assert pool.shortfall(AllocationRequest("job", ("github",), workers=1)) == (
        Rejection(INSUFFICIENT_CAPACITY, Dimension.CPU, 1_250, 1_000)
    )
    assert pool.shortfall(AllocationRequest("job", ("browser",), workers=1)) == (
        Rejection(INSUFFICIENT_CAPACITY, Dimension.CPU, 1_000, 500)
    )


def test_an_instance_started_before_instances_held_costs_is_charged_once() -> None:
    """A ServerStarted without a cost (the old rule): the instance holds
    nothing; the first allocation attaching to it now charges its cost once
    (ServerCharged), the next does not."""
    pool = costly_pool()
    pool.trigger_event(
        Pool.ServerStarted, timestamp=at(0), actor="old", name="github", port=9000
    )
    assert pool.servers["github"].cost is None
    assert pool.reserved == Resources()
    reserve(pool, "alloc-000000000001", servers=("github",), now=1)
    reserve(pool, "alloc-000000000002", servers=("github",), now=2)
    charged = [e for e in pool.collect_events() if isinstance(e, Pool.ServerCharged)]
    assert [(e.name, e.cost) for e in charged] == [("github", GITHUB.as_dict())]
    assert pool.reserved == GITHUB
    for i in (1, 2):
        pool.free(f"alloc-00000000000{i}", "released", at=at(3), actor="bob")
    pool.stop_idle_servers(at(70), actor="sweeper")
    assert pool.reserved == Resources()


def test_reserving_takes_capacity_and_freeing_gives_it_back() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", workers=3)
    assert pool.reserved == Resources(3_000, 6_144, 3)
    assert pool.available == Resources(13_000, 26_624, 7)
    reserve(pool, "alloc-000000000002", workers=7)
    assert pool.available == Resources(6_000, 12_288, 0)
    assert pool.free("alloc-000000000001", "released", at=at(5), actor="bob")
    assert pool.available == Resources(9_000, 18_432, 3)
    assert pool.free("alloc-000000000002", "released", at=at(5), actor="bob")
    assert pool.reserved == Resources()


def test_freeing_what_the_pool_does_not_hold_changes_nothing() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", workers=1)
    version = pool.version
    assert not pool.free("alloc-00000000dead", "released", at=at(1), actor="bob")
    assert pool.free("alloc-000000000001", "released", at=at(1), actor="bob")
    assert not pool.free("alloc-000000000001", "released", at=at(2), actor="bob")
    assert pool.version == version + 1
    assert pool.reserved == Resources()


# -- rejections ------------------------------------------------------------------------


def test_too_many_workers_is_refused_with_the_numbers() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", workers=4)
    assert pool.shortfall(AllocationRequest("job", workers=10)) == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.WORKERS, 10, 6
    )
    assert pool.shortfall(AllocationRequest("job", workers=6)) is None


def test_too_much_cpu_is_refused_in_millicores() -> None:
    pool = new_pool(PoolSettings(capacity=Resources(2_500, 32_768, 10)))
    assert pool.shortfall(AllocationRequest("job", workers=3)) == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.CPU, 3_000, 2_500
    )


def test_too_much_memory_is_refused_in_mib() -> None:
    pool = new_pool(PoolSettings(capacity=Resources(16_000, 5_000, 10)))
    assert pool.shortfall(AllocationRequest("job", workers=3)) == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.MEMORY, 6_144, 5_000
    )


def test_workers_are_checked_before_cpu_and_cpu_before_memory() -> None:
    pool = new_pool(PoolSettings(capacity=Resources(1_000, 1_000, 1)))
    rejection = pool.shortfall(AllocationRequest("job", workers=2))
    assert rejection is not None
    assert rejection.dimension is Dimension.WORKERS
    pool = new_pool(PoolSettings(capacity=Resources(1_000, 1_000, 5)))
    rejection = pool.shortfall(AllocationRequest("job", workers=2))
    assert rejection is not None
    assert rejection.dimension is Dimension.CPU


def test_a_server_cost_can_be_what_does_not_fit() -> None:
    pool = new_pool(
        PoolSettings(server_costs={"browser": Resources(0, 40_000, 0)}),
    )
    assert pool.shortfall(AllocationRequest("job", ("browser",))) == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.MEMORY, 40_000, 32_768
    )


def test_a_pool_that_refuses_does_not_reserve() -> None:
    pool = new_pool()
    with pytest.raises(ValueError, match="does not fit"):
        reserve(pool, "alloc-000000000001", workers=11)
    assert pool.reserved == Resources()
    assert pool.reservations == {}


# -- ports and MCP servers -------------------------------------------------------------


def test_workers_get_the_lowest_free_ports_and_give_them_back() -> None:
    pool = new_pool()
    assert reserve(pool, "alloc-000000000001", workers=2)[0] == (8000, 8001)
    assert reserve(pool, "alloc-000000000002", workers=1)[0] == (8002,)
    pool.free("alloc-000000000001", "released", at=at(1), actor="bob")
    assert reserve(pool, "alloc-000000000003", workers=3)[0] == (8000, 8001, 8003)
    assert pool.worker_ports == {8000, 8001, 8002, 8003}


def test_a_new_server_starts_on_the_lowest_free_port() -> None:
    pool = new_pool()
    _, servers = reserve(pool, "alloc-000000000001", servers=("github", "slack"))
    assert servers == (("github", 9000, True), ("slack", 9001, True))
    assert pool.servers["github"].references == 1
    assert pool.servers["github"].idle_since is None


def test_a_running_server_is_attached_not_started_again() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", servers=("github",))
    _, servers = reserve(pool, "alloc-000000000002", servers=("github",))
    assert servers == (("github", 9000, False),)
    assert pool.servers["github"].references == 2
    started = [e for e in pool.collect_events() if isinstance(e, Pool.ServerStarted)]
    assert [(e.name, e.port) for e in started] == [("github", 9000)]


def test_a_server_becomes_idle_when_its_last_user_goes() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", servers=("github",))
    reserve(pool, "alloc-000000000002", servers=("github",))
    pool.free("alloc-000000000001", "released", at=at(10), actor="bob")
    assert pool.servers["github"].references == 1
    assert pool.servers["github"].idle_since is None
    pool.free("alloc-000000000002", "released", at=at(20), actor="bob")
    assert pool.servers["github"].references == 0
    assert pool.servers["github"].idle_since == at(20)


def test_an_idle_server_stops_after_the_idle_timeout_and_frees_its_port() -> None:
    pool = new_pool(PoolSettings(idle_timeout_seconds=300))
    reserve(pool, "alloc-000000000001", servers=("github", "slack"))
    pool.free("alloc-000000000001", "released", at=at(100), actor="bob")
    assert pool.stop_idle_servers(at(399), actor="system:sweeper") == []
    stopped = pool.stop_idle_servers(at(400), actor="system:sweeper")
    assert sorted((s.name, s.port) for s in stopped) == [
        ("github", 9000),
        ("slack", 9001),
    ]
    assert pool.servers == {}
    assert pool.free_mcp_ports() == 100
    _, servers = reserve(pool, "alloc-000000000002", servers=("jira",), now=500)
    assert servers == (("jira", 9000, True),)


def test_each_idle_server_stops_after_its_own_idle_timeout() -> None:
    pool = new_pool(
        PoolSettings(idle_timeout_seconds=300, server_idle_timeouts={"github": 60})
    )
    reserve(pool, "alloc-000000000001", servers=("github", "slack"))
    pool.free("alloc-000000000001", "released", at=at(100), actor="bob")
    assert pool.stop_idle_servers(at(159), actor="system:sweeper") == []
    [github] = pool.stop_idle_servers(at(160), actor="system:sweeper")
    assert github.name == "github"
    assert pool.stop_idle_servers(at(399), actor="system:sweeper") == []
    [slack] = pool.stop_idle_servers(at(400), actor="system:sweeper")
    assert slack.name == "slack"


def test_an_idle_server_that_is_used_again_is_not_stopped() -> None:
    pool = new_pool(PoolSettings(idle_timeout_seconds=300))
    reserve(pool, "alloc-000000000001", servers=("github",))
    pool.free("alloc-000000000001", "released", at=at(100), actor="bob")
    _, servers = reserve(pool, "alloc-000000000002", servers=("github",), now=200)
    assert servers == (("github", 9000, False),)
    assert pool.stop_idle_servers(at(10_000), actor="system:sweeper") == []
    assert pool.servers["github"].references == 1


def test_all_hundred_mcp_ports_in_use_refuses_a_new_server() -> None:
    pool = new_pool()
    for batch in range(4):
        names = tuple(f"s{batch * 25 + i}" for i in range(25))
        reserve(pool, f"alloc-00000000000{batch}", servers=names)
    assert pool.free_mcp_ports() == 0
    assert {s.port for s in pool.servers.values()} == set(range(9000, 9100))
    assert pool.shortfall(AllocationRequest("job", ("one-more",))) == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.MCP_PORTS, 1, 0
    )
    # A running server can still be shared: it needs no port.
    assert pool.shortfall(AllocationRequest("job", ("s42",))) is None


def test_an_idle_server_gives_its_port_to_a_new_one_when_ports_run_out() -> None:
    pool = new_pool()
    for batch in range(4):
        names = tuple(f"s{batch * 25 + i}" for i in range(25))
        reserve(pool, f"alloc-00000000000{batch}", servers=names)
    pool.free("alloc-000000000000", "released", at=at(10), actor="bob")
    _, servers = reserve(pool, "alloc-000000000009", servers=("new",), now=20)
    assert servers == (("new", 9000, True),)
    assert "s0" not in pool.servers
    assert len(pool.servers) == 100


# -- capacity changes and leases -------------------------------------------------------


def test_lowering_capacity_never_evicts_but_refuses_new_requests() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", workers=5)
    assert pool.change_capacity(Resources(16_000, 32_768, 2), at=at(1), actor="ops")
    assert pool.reservations.keys() == {"alloc-000000000001"}
    assert pool.reserved == Resources(5_000, 10_240, 5)
    assert pool.shortfall(AllocationRequest("job", workers=1)) == Rejection(
        INSUFFICIENT_CAPACITY, Dimension.WORKERS, 1, 0
    )
    # What a request needs none of never refuses it.
    assert pool.shortfall(AllocationRequest("job", ("github",))) is None


def test_setting_the_same_capacity_records_nothing() -> None:
    pool = new_pool()
    version = pool.version
    assert not pool.change_capacity(DEFAULT_CAPACITY, at=at(1), actor="ops")
    assert pool.version == version


def test_due_reservations_come_in_expiry_then_id_order() -> None:
    pool = new_pool()
    reserve(pool, "alloc-00000000000c", workers=1, ttl=120)
    reserve(pool, "alloc-00000000000b", workers=1, ttl=60)
    reserve(pool, "alloc-00000000000a", workers=1, ttl=120)
    reserve(pool, "alloc-00000000000d", workers=1, ttl=3600)
    assert [r.allocation_id for r in pool.due(at(59))] == []
    assert [r.allocation_id for r in pool.due(at(60))] == ["alloc-00000000000b"]
    assert [r.allocation_id for r in pool.due(at(120))] == [
        "alloc-00000000000b",
        "alloc-00000000000a",
        "alloc-00000000000c",
    ]


def test_extending_a_lease_takes_it_out_of_the_due_list() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", workers=1, ttl=60)
    pool.extend_lease("alloc-000000000001", at(600), at=at(30), actor="alice")
    assert pool.due(at(599)) == []
    with pytest.raises(KeyError):
        pool.extend_lease("alloc-00000000dead", at(600), at=at(30), actor="alice")


def test_pool_events_carry_the_time_and_actor() -> None:
    pool = new_pool()
    reserve(pool, "alloc-000000000001", servers=("github",), now=5)
    pool.free("alloc-000000000001", "expired", at=at(70), actor="system:sweeper")
    pool.stop_idle_servers(at(400), actor="system:sweeper")
    stamped = [
        (type(e).__name__, e.timestamp, cast(Pool.Event, e).actor)
        for e in pool.collect_events()
    ]
    assert stamped == [
        ("Created", T0, "local"),
        ("ServerStarted", at(5), "alice"),
        ("Reserved", at(5), "alice"),
        ("Freed", at(70), "system:sweeper"),
        ("ServerStopped", at(400), "system:sweeper"),
    ]
