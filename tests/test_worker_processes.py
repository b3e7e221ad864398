"""Worker processes, for real: started in their limits with their variables,
killed for passing their memory (by cgroups where the machine offers them,
and by RLIMIT_AS, forced), stopped by process group and cgroup, reported
when they exit by themselves, and adopted by the next supervisor."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from allocation_ledger.adapters.config.entries import PoolEntry
from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.cgroups import Mount, group_dir
from allocation_ledger.adapters.provisioning.limits import (
    CPU_PERIOD_US,
    MIB,
    WorkerLimits,
    group_pids,
    memory_kills,
    release_groups,
)
from allocation_ledger.adapters.provisioning.worker_reports import (
    WorkerEvent,
    WorkerStartError,
)
from allocation_ledger.adapters.provisioning.workers import WorkerProcesses

PYTHON = sys.executable
PROGRAM = str(Path(__file__).with_name("worker_program.py"))
POOL = "default"
HOST = "127.0.0.1"
COMMAND = [
    PYTHON,
    PROGRAM,
    "--port",
    "{port}",
    "--worker-id",
    "{worker_id}",
    "--allocation-id",
    "{allocation_id}",
]


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Events:
    """Every WorkerEvent a supervisor reported."""

    def __init__(self) -> None:
        self.items: list[WorkerEvent] = []
        self._changed = threading.Condition()

    def __call__(self, event: WorkerEvent) -> None:
        with self._changed:
            self.items.append(event)
            self._changed.notify_all()

    def of(self, kind: str, worker_id: str | None = None) -> list[WorkerEvent]:
        with self._changed:
            return [
                e
                for e in self.items
                if e.kind == kind and worker_id in (None, e.worker_id)
            ]

    def wait_for(self, kind: str, worker_id: str, timeout: float = 20) -> WorkerEvent:
        """The first event of kind about worker_id, waiting up to timeout seconds."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: bool(self.of(kind, worker_id)), timeout
            )
        kinds = [(e.kind, e.worker_id) for e in self.items]
        assert found, f"no {kind} event of {worker_id}; events: {kinds}"
        return self.of(kind, worker_id)[0]


class Workers:
    """Starts workers of one test; everything they ran dies at teardown."""

    def __init__(self, data_dir: Path, events: Events) -> None:
        self.data_dir = data_dir
        self.events = events
        self.made: list[WorkerProcesses] = []
        self.pids: list[tuple[int, int | None]] = []
        self.limits: list[WorkerLimits] = []

    def supervisor(self, **settings: Any) -> WorkerProcesses:
        settings.setdefault("watch_interval_seconds", 0.05)
        made = WorkerProcesses(self.data_dir, self.events, **settings)
        self.made.append(made)
        return made

    def start(
        self,
        supervisor: WorkerProcesses,
        *mode: str,
        allocation_id: str = "alloc-000000000001",
        index: int = 0,
        cpu_millicores: int = 500,
        memory_mib: int = 128,
        **extra: Any,
    ) -> Any:
        worker_id = f"{allocation_id}-worker-{index}"
        port = extra.pop("port", None) or free_port()
        argv = PoolEntry(worker_command=COMMAND).worker_argv(
            port=port, worker_id=worker_id, allocation_id=allocation_id
        )
        info = supervisor.start(
            pool=POOL,
            allocation_id=allocation_id,
            worker_id=worker_id,
            port=port,
            argv=[*argv, *mode],
            cpu_millicores=cpu_millicores,
            memory_mib=memory_mib,
            **extra,
        )
        self.pids.append((info.pid, control.start_ticks(info.pid)))
        self.limits.append(info.limits)
        return info

    def clean_up(self) -> None:
        for made in self.made:
            made.close(stop_all=False)
        for made in self.made:
            for info in made.status():
                self.pids.append((info.pid, None))
                self.limits.append(info.limits)
        for pid, ticks in self.pids:
            now = control.start_ticks(pid)
            if now is not None and ticks is not None and now != ticks:
                continue  # the pid is someone else's now
            if control.group_alive(pid):
                control.signal_group(pid, signal.SIGKILL)
            control.reap(pid)
        for limits in self.limits:
            release_groups(limits, 2.0)
        for made in self.made:
            made._limiter.close()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def workers(tmp_path: Path, events: Events) -> Iterator[Workers]:
    made = Workers(tmp_path, events)
    try:
        yield made
    finally:
        made.clean_up()


def http_get(port: int) -> dict[str, Any]:
    """The JSON the serving worker answers on port (waiting until it listens)."""
    assert wait_until(lambda: control.accepts_connections(HOST, port, 0.5))
    with socket.create_connection((HOST, port), timeout=5) as connection:
        connection.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    answer: dict[str, Any] = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return answer


def process_limit(pid: int, name: str) -> str:
    """The soft limit `name` (e.g. 'Max address space') from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith(name):
            return line[len(name) :].split()[0]
    raise AssertionError(f"no {name} in /proc/{pid}/limits")


def uses_cgroups(supervisor: WorkerProcesses) -> bool:
    return supervisor.enforcement()["memory"].startswith("cgroup")


# -- starting ------------------------------------------------------------------


def test_a_worker_gets_its_argv_port_and_variables_and_a_second_start_returns_it(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor()
    endpoints = {"time": "http://localhost:9000/mcp", "git": "http://h:9001/mcp"}
    info = workers.start(supervisor, mcp_endpoints=endpoints, env={"EXTRA": "1"})

    answer = http_get(info.port)
    assert answer["pid"] == info.pid
    assert answer["argv"][1:] == [
        *("--port", str(info.port), "--worker-id", info.worker_id),
        *("--allocation-id", info.allocation_id),
    ]
    assert answer["env"] == {
        "LEDGER_ALLOCATION_ID": info.allocation_id,
        "LEDGER_WORKER_ID": info.worker_id,
        "LEDGER_POOL": POOL,
        "LEDGER_WORKER_PORT": str(info.port),
        "LEDGER_MCP_ENDPOINTS": json.dumps(endpoints, sort_keys=True),
    }
    assert info.status == "running"
    assert info.log_path == workers.data_dir / "logs" / f"worker-{info.worker_id}.log"
    assert "starting:" in info.log_path.read_text()
    started = events.wait_for("started", info.worker_id)
    assert started.pid == info.pid and started.allocation_id == info.allocation_id
    assert os.getpgid(info.pid) == info.pid  # the leader of its own group

    again = workers.start(supervisor, port=info.port, mcp_endpoints=endpoints)
    assert again.pid == info.pid
    assert len(events.of("started")) == 1
    with pytest.raises(ValueError, match="already runs"):
        workers.start(supervisor)  # another port


def test_a_command_that_cannot_run_is_a_start_error_and_leaves_nothing(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor()
    with pytest.raises(WorkerStartError, match="no-such-worker-command") as failed:
        supervisor.start(
            pool=POOL,
            allocation_id="alloc-000000000002",
            worker_id="alloc-000000000002-worker-0",
            port=free_port(),
            argv=["no-such-worker-command", "--port", "1"],
            cpu_millicores=250,
            memory_mib=64,
        )
    assert "No such file" in str(failed.value)
    assert supervisor.status() == []
    assert events.items == []
    assert list(supervisor.records) == []
    for base in supervisor._limiter.bases:  # nothing is left in its cgroups
        assert not any(p.name.startswith("worker-") for p in base.iterdir())


# -- limits ----------------------------------------------------------------------


def test_cgroup_limits_are_written_and_the_worker_is_inside_them(
    workers: Workers,
) -> None:
    supervisor = workers.supervisor()
    if not uses_cgroups(supervisor):
        pytest.skip(f"no cgroups here: {supervisor.enforcement()}")
    info = workers.start(supervisor, cpu_millicores=500, memory_mib=96)
    limits = info.limits
    assert (limits.memory, limits.cpu) == (
        supervisor.enforcement()["memory"],
        supervisor.enforcement()["cpu"],
    )
    assert info.pid in group_pids(limits)
    memory = Path(str(limits.memory_group))
    if limits.memory == "cgroup-v2":
        assert (memory / "memory.max").read_text().strip() == str(96 * MIB)
    else:
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(96 * MIB)
    if limits.cpu == "none":
        pytest.skip("no CPU controller here")
    cpu = Path(str(limits.cpu_group))
    if limits.cpu == "cgroup-v2":
        assert (cpu / "cpu.max").read_text().split() == ["50000", str(CPU_PERIOD_US)]
    else:
        assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cpu / "cpu.cfs_period_us").read_text().strip() == str(CPU_PERIOD_US)
    own = Path(f"/proc/{info.pid}/cgroup").read_text()
    assert f"worker-{info.worker_id}" in own

    supervisor.stop(info.worker_id, grace_seconds=2)
    assert not memory.exists() and not cpu.exists()


def test_a_worker_that_passes_its_memory_is_killed_and_the_cause_recorded(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor()
    info = workers.start(supervisor, "--mode", "allocate", memory_mib=64)

    exited = events.wait_for("exited", info.worker_id)
    assert exited.detail["cause"] == "memory_limit", exited.detail
    final = supervisor.info(info.worker_id)
    assert final is not None
    assert (final.status, final.cause) == ("exited", "memory_limit")
    assert "allocated all" not in info.log_path.read_text()
    if uses_cgroups(supervisor):
        assert exited.detail["oom_kills"] >= 1
        assert exited.detail["signal"] == signal.SIGKILL
        assert not Path(str(info.limits.memory_group)).exists()
    assert list(supervisor.records) == []


def test_under_rlimit_the_address_space_is_capped_and_a_memory_error_is_the_cause(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor(enforce="rlimit")
    assert supervisor.enforcement()["memory"] == "rlimit-as"
    assert supervisor.enforcement()["cpu"] == "none"

    serving = workers.start(supervisor, memory_mib=96, index=0)
    assert serving.limits.rlimit_as_bytes == 96 * MIB
    assert serving.limits.memory_group is None and serving.limits.cpu == "none"
    assert process_limit(serving.pid, "Max address space") == str(96 * MIB)
    assert http_get(serving.port)["pid"] == serving.pid  # it runs within it

    hungry = workers.start(supervisor, "--mode", "allocate", memory_mib=64, index=1)
    exited = events.wait_for("exited", hungry.worker_id)
    assert exited.detail["cause"] == "memory_limit", exited.detail
    assert exited.detail["code"] == 1
    assert "MemoryError" in exited.detail["evidence"]


# -- ending ------------------------------------------------------------------------


def test_a_worker_that_exits_by_itself_is_reported_with_its_code(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor()
    info = workers.start(supervisor, "--mode", "exit", "--exit-code", "3")

    exited = events.wait_for("exited", info.worker_id)
    assert exited.detail["cause"] == "exited"
    assert (exited.detail["code"], exited.detail["signal"]) == (3, None)
    assert "exiting with 3" in exited.detail["log_tail"]
    final = supervisor.info(info.worker_id)
    assert final is not None and final.status == "exited"
    assert final.exit is not None and final.exit.code == 3
    assert list(supervisor.records) == []
    assert all(not group.exists() for group in info.limits.groups())
    # not restarted: a later look finds it still ended
    time.sleep(0.3)
    assert len(events.of("started")) == 1


def test_an_ended_worker_is_forgotten_after_keep_ended_seconds(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor(keep_ended_seconds=0.2)
    info = workers.start(supervisor, "--mode", "exit")
    events.wait_for("exited", info.worker_id)
    assert wait_until(lambda: supervisor.info(info.worker_id) is None, 5)
    assert supervisor.status() == []
    assert supervisor._keys._locks == {}  # no lock is kept for it either


def test_stop_terms_then_kills_the_group_and_whatever_left_it(
    workers: Workers, events: Events, tmp_path: Path
) -> None:
    supervisor = workers.supervisor()
    polite = workers.start(supervisor, index=0)
    stubborn = workers.start(supervisor, "--mode", "stubborn", index=1)
    assert wait_until(lambda: "ignoring" in stubborn.log_path.read_text())

    stopped = supervisor.stop(polite.worker_id, grace_seconds=5)
    assert stopped is not None
    assert (stopped.status, stopped.cause) == ("stopped", "stopped")
    event = events.wait_for("stopped", polite.worker_id)
    assert event.detail["signal"] == signal.SIGTERM and event.detail["forced"] is False

    began = time.monotonic()
    supervisor.stop(stubborn.worker_id, grace_seconds=0.5)
    assert time.monotonic() - began < 5
    event = events.wait_for("stopped", stubborn.worker_id)
    assert event.detail["signal"] == signal.SIGKILL and event.detail["forced"] is True
    for info in (polite, stubborn):
        assert not control.group_alive(info.pid)
        assert not any(group.exists() for group in info.limits.groups())
    assert list(supervisor.records) == []
    assert events.of("exited") == []  # a stop is no exit
    assert supervisor.stop(polite.worker_id) is not None  # again: nothing to do
    assert len(events.of("stopped")) == 2

    if not uses_cgroups(supervisor):
        return  # without cgroups, a process that leaves the group is not reached
    pid_file = tmp_path / "escaped.pid"
    leaver = workers.start(
        supervisor, "--mode", "escape", "--pid-file", str(pid_file), index=2
    )
    assert wait_until(pid_file.exists)
    escaped = int(pid_file.read_text())
    workers.pids.append((escaped, control.start_ticks(escaped)))
    assert os.getpgid(escaped) != leaver.pid  # it left the worker's group
    supervisor.stop(leaver.worker_id, grace_seconds=2)
    assert wait_until(lambda: not control.is_alive(escaped), 5)


# -- the next run ----------------------------------------------------------------


def test_the_next_supervisor_adopts_expected_workers_and_stops_the_rest(
    workers: Workers, events: Events
) -> None:
    first = workers.supervisor()
    kept = workers.start(first, index=0)
    unwanted = workers.start(first, index=1)
    died = workers.start(first, index=2)
    first.close()  # the workers keep running
    os.kill(died.pid, signal.SIGKILL)  # dies while nobody watches
    assert wait_until(lambda: not control.is_alive(died.pid))
    assert control.is_alive(kept.pid) and control.is_alive(unwanted.pid)

    second = workers.supervisor()
    done = second.reconcile([kept.worker_id, died.worker_id])

    assert {(e.kind, e.worker_id) for e in done} == {
        ("adopted", kept.worker_id),
        ("stopped", unwanted.worker_id),
        ("exited", died.worker_id),
    }
    adopted = second.info(kept.worker_id)
    assert adopted is not None and adopted.status == "running"
    assert adopted.pid == kept.pid and adopted.limits == kept.limits
    assert http_get(kept.port)["pid"] == kept.pid
    assert not control.group_alive(unwanted.pid)
    assert events.of("stopped", unwanted.worker_id)[0].detail["reason"] == (
        "not expected"
    )
    gone = second.info(died.worker_id)
    assert gone is not None and gone.status == "exited"
    assert gone.cause in ("unknown", "signal")  # not our child: unknown
    assert {r.worker_id for _, r in second.records if r} == {kept.worker_id}

    # a start of the adopted worker returns it; stopping it ends it
    again = workers.start(second, port=kept.port)
    assert again.pid == kept.pid
    second.stop(kept.worker_id, grace_seconds=2)
    assert not control.group_alive(kept.pid)
    assert list(second.records) == []


# -- pieces that need no process -----------------------------------------------


def test_oom_kill_counts_are_read_from_v1_and_v2_files(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n"
    )
    (v2 / "memory.events").write_text(
        "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 1\n"
    )
    one = WorkerLimits(0, 64, "cgroup-v1", "none", memory_group=str(v1))
    two = WorkerLimits(0, 64, "cgroup-v2", "none", memory_group=str(v2))
    assert (memory_kills(one), memory_kills(two)) == (2, 1)
    assert memory_kills(WorkerLimits(0, 64, "rlimit-as", "none")) is None
    assert WorkerLimits.from_json(two.as_detail()) == two


def test_a_cgroup_path_is_found_under_its_mount_and_its_mount_root() -> None:
    whole = Mount("/", Path("/sys/fs/cgroup/memory"), "cgroup", frozenset())
    nested = Mount("/docker/abc", Path("/sys/fs/cgroup"), "cgroup2", frozenset())
    assert group_dir(whole, "/a/b") == Path("/sys/fs/cgroup/memory/a/b")
    assert group_dir(nested, "/docker/abc/x") == Path("/sys/fs/cgroup/x")
    assert group_dir(nested, "/") == Path("/sys/fs/cgroup")


def test_wait_ready_waits_for_the_port_and_for_the_settle_time(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor()
    late = workers.start(supervisor, "--delay-seconds", "1", index=0)
    quiet = workers.start(supervisor, "--mode", "stubborn", index=1)

    [ready] = supervisor.wait_ready([late.worker_id], check="port", timeout_seconds=30)
    assert control.accepts_connections(HOST, late.port, 1)  # it listens now
    assert ready.pid == late.pid and ready.status == "running"
    told = events.of("ready", late.worker_id)
    assert [e.detail["check"] for e in told] == ["port"]
    assert told[0].detail["port"] == late.port
    assert told[0].detail["seconds"] > 0

    supervisor.wait_ready(
        [quiet.worker_id], check="running", timeout_seconds=30, settle_seconds=0.3
    )
    [settled] = events.of("ready", quiet.worker_id)
    assert settled.detail["check"] == "running"
    assert settled.detail["seconds"] >= 0.3
    with pytest.raises(WorkerStartError, match="did not listen on its port"):
        supervisor.wait_ready([quiet.worker_id], check="port", timeout_seconds=0.5)
    running = supervisor.info(quiet.worker_id)
    assert running is not None and running.status == "running"  # left to the caller


def test_wait_ready_fails_at_once_for_a_worker_that_exits_or_is_stopped(
    workers: Workers, events: Events
) -> None:
    supervisor = workers.supervisor(watch_interval_seconds=60)  # no watcher help
    crash = workers.start(supervisor, "--mode", "exit", "--exit-code", "4", index=0)
    began = time.monotonic()
    with pytest.raises(WorkerStartError) as failed:
        supervisor.wait_ready([crash.worker_id], check="port", timeout_seconds=60)
    assert time.monotonic() - began < 30  # not at the timeout
    assert "it exited before it was ready (exit code 4)" in str(failed.value)
    assert "exiting with 4" in failed.value.log_tail
    assert events.of("exited", crash.worker_id)
    assert not events.of("ready", crash.worker_id)

    slow = workers.start(supervisor, "--delay-seconds", "30", index=1)
    threading.Timer(0.5, supervisor.stop, args=(slow.worker_id, 1.0)).start()
    with pytest.raises(WorkerStartError, match="stopped before it was ready"):
        supervisor.wait_ready([slow.worker_id], check="port", timeout_seconds=60)
