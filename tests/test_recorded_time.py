"""Time never runs backwards in the ledger (design invariant 8; issue 12, item 6).

The system clock can be stepped back (NTP, a VM restored). The ledger records
it through a RecordedClock: an event is never stamped earlier than the last one
recorded, a step back is logged as a warning, and time holds until the clock
catches up. `verify` reports an event earlier than its predecessor.
"""

from __future__ import annotations

import itertools
import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from allocation_ledger.adapters.cli import main
from allocation_ledger.adapters.config.settings import Settings
from allocation_ledger.adapters.storage import audit
from allocation_ledger.adapters.storage.service import AllocationService
from allocation_ledger.domain.allocation import Allocation
from allocation_ledger.domain.clock import ClockBehind, ManualClock, RecordedClock
from allocation_ledger.domain.pool import Pool, pool_uuid
from allocation_ledger.domain.pool_settings import PoolSettings
from allocation_ledger.domain.registry import PoolRegistry
from allocation_ledger.domain.values import AllocationRequest, Resources
from allocation_ledger.projections.replay import logged_events
from tests.ledger_support import OpenService

TWO_HOURS = 2 * 3600
CLOCK_LOGGER = "allocation_ledger.adapters.storage.system_clock"


class SteppedClock(ManualClock):
    """A manual clock that can also be stepped back, as a system clock can."""

    def step_back(self, seconds: float) -> None:
        self._now -= timedelta(seconds=seconds)


@pytest.fixture
def manual_clock() -> SteppedClock:
    """The clock of this module's services (see conftest): one that can step back."""
    return SteppedClock()


def event_times(service: AllocationService) -> list[tuple[int, str, datetime]]:
    """(position, event, time) of every event in the log."""
    found = []
    for position, event in logged_events(
        service.ledger.recorder, service.projector.decode
    ):
        assert isinstance(event, Allocation.Event | Pool.Event | PoolRegistry.Event)
        found.append((position, type(event).__name__, event.timestamp))
    return found


def assert_never_earlier(times: list[tuple[int, str, datetime]]) -> None:
    for (_, _, before), (position, name, after) in itertools.pairwise(times):
        assert after >= before, f"{name} at position {position} runs back"


# -- the guard itself --------------------------------------------------------


def test_a_recorded_clock_holds_while_its_clock_is_behind() -> None:
    clock = SteppedClock()
    told: list[ClockBehind] = []
    recorded = RecordedClock(clock, told.append)
    start = recorded.now()
    clock.advance(10)
    assert recorded.now() == start + timedelta(seconds=10)

    clock.step_back(TWO_HOURS)
    assert recorded.now() == start + timedelta(seconds=10)  # holds
    clock.advance(60)
    assert recorded.now() == start + timedelta(seconds=10)  # still behind
    assert told == [
        ClockBehind(
            start + timedelta(seconds=10 - TWO_HOURS),
            start + timedelta(seconds=10),
            True,
        )
    ]
    assert told[0].seconds == TWO_HOURS

    clock.advance(TWO_HOURS)  # caught up, and past the mark
    assert recorded.now() == start + timedelta(seconds=70)
    assert len(told) == 1


def test_a_recorded_clock_is_never_earlier_than_what_it_observed() -> None:
    clock = ManualClock()
    told: list[ClockBehind] = []
    recorded = RecordedClock(clock, told.append)
    recorded.observe(clock.now() + timedelta(milliseconds=50))
    assert recorded.now() == clock.now() + timedelta(milliseconds=50)
    assert told == []  # a skew between servers this small is not reported
    recorded.observe(clock.now() + timedelta(seconds=30))
    assert recorded.now() == clock.now() + timedelta(seconds=30)
    assert [t.stepped_back for t in told] == [False]


def test_one_unit_of_work_is_one_moment() -> None:
    clock = ManualClock()
    recorded = RecordedClock(clock)
    with recorded.unit():
        first = recorded.now()
        clock.advance(5)
        assert recorded.now() == first
    assert recorded.now() == first + timedelta(seconds=5)


# -- the ledger ----------------------------------------------------------------


def test_a_clock_stepped_back_never_shortens_a_lease(
    ledger_service: AllocationService,
    manual_clock: SteppedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = ledger_service.ledger
    start = manual_clock.now()
    made = ledger.request(AllocationRequest("job", (), 1, ttl_seconds=3600))
    allocation_id = made.allocation.allocation_id
    manual_clock.advance(600)
    ledger.renew(allocation_id)  # at start + 600: the lease runs to start + 4200
    assert ledger.allocation(allocation_id).expires_at == start + timedelta(
        seconds=4200
    )

    manual_clock.step_back(TWO_HOURS)  # reads start + 600 - 2 h
    manual_clock.advance(60)
    with caplog.at_level(logging.WARNING, CLOCK_LOGGER):
        renewed = ledger.renew(allocation_id)
    held = start + timedelta(seconds=600)  # time holds at the last recorded
    assert renewed.allocation.expires_at == held + timedelta(seconds=3600)
    assert "stepped back" in caplog.text
    assert "7140.000 s before" in caplog.text  # 2 h back, then 60 s on

    # More commands while behind: all at the held moment, no new warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, CLOCK_LOGGER):
        other = ledger.request(AllocationRequest("other", (), 1))
    assert other.allocation.requested_at == held
    assert caplog.text == ""

    manual_clock.advance(TWO_HOURS)  # caught up: start + 660
    ledger.release(other.allocation.allocation_id)
    times = event_times(ledger_service)
    assert_never_earlier(times)
    assert times[-1][2] == start + timedelta(seconds=660)
    report = audit.verify(ledger_service, time_tolerance=timedelta(0))
    assert report.clean, report.as_dict()


def test_a_reopened_ledger_does_not_start_before_its_history(
    tmp_path: Path,
    open_services: OpenService,
    manual_clock: SteppedClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "ledger.db")
    first = open_services(settings)
    first.ledger.request(AllocationRequest("before", (), 1))
    last = manual_clock.now()
    first.close()

    manual_clock.step_back(TWO_HOURS)  # the VM was restored from an old image
    reopened = open_services(settings)
    with caplog.at_level(logging.WARNING, CLOCK_LOGGER):
        made = reopened.ledger.request(AllocationRequest("after", (), 1))
    assert made.allocation.requested_at == last
    assert "stepped back" not in caplog.text  # this process never read later
    assert "lags times" in caplog.text
    assert_never_earlier(event_times(reopened))


def test_two_processes_with_skewed_clocks_never_write_back_in_time(
    tmp_path: Path, open_services: OpenService, manual_clock: SteppedClock
) -> None:
    settings = Settings(store="sqlite", database=tmp_path / "ledger.db")
    ahead = open_services(settings)
    behind_clock = SteppedClock(manual_clock.now() - timedelta(seconds=10))
    behind = open_services(settings, clock=behind_clock)
    made = ahead.ledger.request(AllocationRequest("a", (), 1))
    # The lagging process reads the pool first in its request, and its
    # moment was taken before: it runs the request again, no earlier.
    other = behind.ledger.request(AllocationRequest("b", (), 1))
    assert other.allocation.requested_at == made.allocation.requested_at
    renewed = behind.ledger.renew(made.allocation.allocation_id)
    assert renewed.allocation.expires_at == manual_clock.now() + timedelta(seconds=3600)
    assert_never_earlier(event_times(ahead))
    report = audit.verify(ahead, time_tolerance=timedelta(0))
    assert report.clean, report.as_dict()


# -- verify --------------------------------------------------------------------


def forge(service: AllocationService, event: object) -> int:
    """Write an event into the store behind the ledger's back; its position."""
    ledger = service.ledger
    ledger.recorder.insert_events([ledger.mapper.to_stored_event(event)])  # type: ignore[arg-type]
    position = ledger.recorder.max_notification_id()
    assert position is not None
    return position


def test_verify_reports_an_event_earlier_than_the_one_before_it(
    ledger_service: AllocationService, manual_clock: SteppedClock
) -> None:
    ledger = ledger_service.ledger
    ledger.request(AllocationRequest("job", (), 1))
    manual_clock.advance(TWO_HOURS)
    ledger.request(AllocationRequest("later", (), 1))
    pool = ledger.pool("default")
    forged = Pool.QuotaSet(  # type: ignore[call-arg]
        originator_id=pool_uuid("default"),
        originator_version=pool.version + 1,
        timestamp=manual_clock.now() - timedelta(hours=1),
        actor="intruder",
        tenant="team-a",
        limits=None,
    )
    position = forge(ledger_service, forged)

    report = audit.verify(ledger_service)
    assert report.violation is not None
    assert report.violation.position == position
    assert report.violation.invariant == 8
    assert report.violation.event == "QuotaSet"
    assert "earlier than the previous event of pool 'default'" in (
        report.violation.message
    )


def capacity_changed(pool: Pool, at: datetime) -> Pool.CapacityChanged:
    """A forged change of a pool's capacity, next in its history, at `at`."""
    return Pool.CapacityChanged(  # type: ignore[call-arg]
        originator_id=pool_uuid(pool.name),
        originator_version=pool.version + 1,
        timestamp=at,
        actor="intruder",
        capacity=Resources(2000, 4096, 2).as_dict(),
    )


def test_verify_allows_servers_a_little_interleaving_across_aggregates(
    ledger_service: AllocationService, manual_clock: SteppedClock
) -> None:
    ledger = ledger_service.ledger
    small = PoolSettings(capacity=Resources(1000, 2048, 1))
    other = ledger.create_pool("other", small).pool
    manual_clock.advance(60)
    ledger.request(AllocationRequest("job", (), 1))
    # 2 s back, on a pool whose own history it follows: two servers sharing
    # a store may commit in the other order than they took their moments.
    forge(
        ledger_service,
        capacity_changed(other, manual_clock.now() - timedelta(seconds=2)),
    )
    assert audit.verify(ledger_service).clean
    strict = audit.verify(ledger_service, time_tolerance=timedelta(0))
    assert strict.violation is not None
    assert strict.violation.invariant == 8
    assert "2 s earlier than the event at position" in strict.violation.message


def test_verify_reports_an_event_of_another_aggregate_far_back_in_the_log(
    ledger_service: AllocationService, manual_clock: SteppedClock
) -> None:
    ledger = ledger_service.ledger
    small = PoolSettings(capacity=Resources(1000, 2048, 1))
    other = ledger.create_pool("other", small).pool
    manual_clock.advance(TWO_HOURS)
    ledger.request(AllocationRequest("job", (), 1))
    latest = manual_clock.now()
    # An hour back, though after the pool's own last event: a history written
    # by a clock stepped back, whatever the tolerance.
    position = forge(
        ledger_service, capacity_changed(other, manual_clock.now() - timedelta(hours=1))
    )
    report = audit.verify(ledger_service)
    assert report.violation is not None
    assert report.violation.position == position
    assert report.violation.invariant == 8
    assert report.violation.event == "CapacityChanged"
    assert "3600 s earlier than the event at position" in report.violation.message
    assert f"({latest.isoformat()}); more than the 5 s" in report.violation.message


def test_the_verify_command_reports_time_running_back(
    tmp_path: Path,
    open_services: OpenService,
    manual_clock: SteppedClock,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    database = tmp_path / "ledger.db"
    service = open_services(Settings(store="sqlite", database=database))
    service.ledger.request(AllocationRequest("job", (), 1))
    manual_clock.advance(60)
    pool = service.ledger.pool("default")
    position = forge(
        service,
        Pool.QuotaSet(  # type: ignore[call-arg]
            originator_id=pool_uuid("default"),
            originator_version=pool.version + 1,
            timestamp=manual_clock.now() - timedelta(hours=3),
            actor="intruder",
            tenant="team-a",
            limits=None,
        ),
    )
    service.close()

    for name in ("STORE", "CONFIG"):
        monkeypatch.delenv(f"ALLOCATION_LEDGER_{name}", raising=False)
    monkeypatch.setenv("ALLOCATION_LEDGER_DATABASE", str(database))
    assert main(["verify", "--json"]) == 1
    report = json.loads(capfd.readouterr().out)
    assert report["violation"]["position"] == position
    assert report["violation"]["invariant"] == 8
    # The table form says which ledger it read in its last line, as a clean
    # verify does (a broken one named none).
    assert main(["verify"]) == 1
    lines = capfd.readouterr().out.splitlines()
    assert lines[0].startswith(f"invariant 8 broken at position {position} ")
    assert lines[-1] == f"ledger: sqlite {database}, read-only"
