"""MCP server processes, for real: started, shared, health-checked, restarted,
stopped and adopted, with the tiny test server (tests/mcp_test_server.py)
and the reference time server behind the stdio bridge."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client import Client

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.health import check_endpoint_sync
from allocation_ledger.adapters.provisioning.process_reports import (
    ProcessEvent,
    ServerStartError,
)
from allocation_ledger.adapters.provisioning.processes import ServerProcesses
from allocation_ledger.adapters.provisioning.run_records import RunRecord, RunRecords
from allocation_ledger.adapters.provisioning.server_spec import (
    RestartPolicy,
    ServerSpec,
)

PYTHON = sys.executable
TEST_SERVER = str(Path(__file__).with_name("mcp_test_server.py"))
POOL = "default"
HOST = "127.0.0.1"


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def http_spec(name: str = "echo-http", *extra: str, timeout: float = 30) -> ServerSpec:
    """The test server listening itself on the port it is given."""
    command = (PYTHON, TEST_SERVER, "--transport", "http")
    placeholders = ("--host", "{host}", "--port", "{port}")
    return ServerSpec(
        name, (*command, *placeholders, *extra), "http", start_timeout_seconds=timeout
    )


def stdio_spec(
    name: str = "echo-stdio", *extra: str, env: dict[str, str] | None = None
) -> ServerSpec:
    """The test server on stdio, served through the bridge."""
    return ServerSpec(name, (PYTHON, TEST_SERVER, *extra), "stdio", env=env or {})


class Events:
    """Every ProcessEvent a supervisor reported, and the processes it started."""

    def __init__(self) -> None:
        self.items: list[ProcessEvent] = []
        self.started: list[tuple[int, int | None]] = []
        self._changed = threading.Condition()

    def __call__(self, event: ProcessEvent) -> None:
        with self._changed:
            self.items.append(event)
            if event.kind == "started" and event.pid is not None:
                self.started.append((event.pid, control.start_ticks(event.pid)))
            self._changed.notify_all()

    def kinds(self, name: str | None = None) -> list[str]:
        with self._changed:
            return [e.kind for e in self.items if name is None or e.name == name]

    def of(self, kind: str, name: str | None = None) -> list[ProcessEvent]:
        with self._changed:
            items = list(self.items)
        return [e for e in items if e.kind == kind and (name is None or e.name == name)]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 40) -> ProcessEvent:
        """The count-th event of kind, waiting for it up to timeout seconds."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: len([e for e in self.items if e.kind == kind]) >= count,
                timeout,
            )
            assert found, f"no {kind} event #{count}; events: {self.kinds()}"
            return [e for e in self.items if e.kind == kind][count - 1]


def kill_leftovers(started: list[tuple[int, int | None]]) -> None:
    """SIGKILL the group of every process a test started that still exists."""
    for pid, ticks in started:
        leader_ticks = control.start_ticks(pid)
        if leader_ticks is not None and leader_ticks != ticks:
            continue  # the pid now belongs to someone else
        if control.group_alive(pid):
            control.signal_group(pid, signal.SIGKILL)
        control.reap(pid)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def supervisors(
    tmp_path: Path, events: Events
) -> Iterator[Callable[..., ServerProcesses]]:
    """Makes ServerProcesses on tmp_path; all their processes die at teardown."""
    made: list[ServerProcesses] = []

    def make(**settings: Any) -> ServerProcesses:
        settings.setdefault("watch_interval_seconds", 0.1)
        processes = ServerProcesses(tmp_path, events, **settings)
        made.append(processes)
        return processes

    yield make
    for processes in made:
        processes.close(stop_all=False)
    for processes in made:
        for info in processes.status():
            if info.pid is not None:
                events.started.append((info.pid, None))
    kill_leftovers(events.started)


@pytest.fixture
def processes(supervisors: Callable[..., ServerProcesses]) -> ServerProcesses:
    return supervisors(restart_policy=RestartPolicy(backoff_seconds=0.1))


async def _read_and_prompt(url: str) -> tuple[list[str], str, str]:
    async with Client(url) as client:
        listed = await client.list_resources()
        read = await client.read_resource("test://greeting")
        prompt = await client.get_prompt("greet", {"name": "Ada"})
        text = read.contents[0]
        message = prompt.messages[0].content
        assert isinstance(text, types.TextResourceContents)
        assert isinstance(message, types.TextContent)
        return [str(r.uri) for r in listed.resources], text.text, message.text


async def _call(url: str, tool: str, arguments: dict[str, Any]) -> Any:
    async with Client(url) as client:
        result = await client.call_tool(tool, arguments)
        assert not result.is_error, result
        return result.structured_content


def call_tool(url: str, tool: str, **arguments: Any) -> Any:
    """Call a tool over streamable HTTP; its structured result."""
    return anyio.run(_call, url, tool, arguments)


def refuses_connections(port: int) -> bool:
    return not control.accepts_connections(HOST, port, 0.5)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_reference_time_server_is_served_over_http_through_the_bridge(
    processes: ServerProcesses, events: Events
) -> None:
    spec = ServerSpec("time", (PYTHON, "-m", "mcp_server_time"), "stdio")
    port = free_port()

    info = processes.ensure_running(POOL, spec, port, HOST)

    assert info.status == "running"
    assert info.endpoint == f"http://{HOST}:{port}/mcp"
    passed = events.wait_for("health_passed")
    assert "get_current_time" in passed.detail["tools"]
    answer = call_tool(info.endpoint, "get_current_time", timezone="UTC")
    assert answer["timezone"] == "UTC"
    processes.stop(POOL, "time")
    assert refuses_connections(port)


def test_a_server_that_listens_itself_is_shared_also_by_threads_asking_at_once(
    processes: ServerProcesses, events: Events
) -> None:
    spec, port = http_spec(), free_port()
    answers: list[int | None] = []

    def ask() -> None:
        answers.append(processes.ensure_running(POOL, spec, port, HOST).pid)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    again = processes.ensure_running(POOL, spec, port, HOST)

    assert len(answers) == 2 and answers[0] == answers[1] == again.pid
    assert len(events.of("started")) == 1
    assert call_tool(again.endpoint, "whoami")["result"] == again.pid
    assert call_tool(again.endpoint, "echo", text="hello")["result"] == "hello"
    with pytest.raises(ValueError, match="already runs on port"):
        processes.ensure_running(POOL, spec, free_port(), HOST)


def test_stop_ends_the_whole_process_group_and_frees_the_port(
    processes: ServerProcesses, events: Events, tmp_path: Path
) -> None:
    port = free_port()
    info = processes.ensure_running(POOL, stdio_spec(), port, HOST)
    assert info.pid is not None
    child = call_tool(info.endpoint, "whoami")["result"]
    assert child != info.pid and os.getpgid(child) == info.pid
    assert anyio.run(_read_and_prompt, info.endpoint) == (
        ["test://greeting"],
        "hello from the test server",
        "Say hello to Ada.",
    )
    assert (tmp_path / "run" / "default-echo-stdio.json").exists()

    stopped = processes.stop(POOL, "echo-stdio", grace_seconds=5)

    assert stopped is not None and stopped.status == "stopped" and stopped.pid is None
    assert refuses_connections(port)
    assert not control.is_alive(info.pid) and not control.is_alive(child)
    assert not control.group_alive(info.pid)
    assert events.kinds() == ["started", "health_passed", "stopped"]
    assert events.of("stopped")[0].detail["forced"] is False
    assert not (tmp_path / "run" / "default-echo-stdio.json").exists()
    assert "starting:" in info.log_path.read_text()


def test_a_killed_server_is_restarted_until_the_restart_budget_is_spent(
    supervisors: Callable[..., ServerProcesses], events: Events
) -> None:
    policy = RestartPolicy(max_restarts=1, window_seconds=60, backoff_seconds=0.2)
    processes = supervisors(restart_policy=policy)
    spec, port = http_spec(), free_port()
    first = processes.ensure_running(POOL, spec, port, HOST)
    assert first.pid is not None

    os.kill(first.pid, signal.SIGKILL)
    restarted = events.wait_for("restarted")

    exited = events.wait_for("exited")
    assert exited.pid == first.pid and exited.detail["signal"] == signal.SIGKILL
    assert restarted.pid is not None and restarted.pid != first.pid
    second = processes.info(POOL, spec.name)
    assert second is not None and second.status == "running" and second.restarts == 1
    assert second.last_exit is not None and second.last_exit.signal == signal.SIGKILL
    assert call_tool(second.endpoint, "whoami")["result"] == restarted.pid

    os.kill(restarted.pid, signal.SIGKILL)
    failed = events.wait_for("failed")

    assert failed.detail["reason"] == "too many restarts"
    final = processes.info(POOL, spec.name)
    assert final is not None and final.status == "failed" and final.pid is None
    assert refuses_connections(port)


def test_a_bridge_whose_child_exits_exits_too_and_is_restarted(
    processes: ServerProcesses, events: Events
) -> None:
    info = processes.ensure_running(POOL, stdio_spec(), free_port(), HOST)

    with pytest.raises(Exception):  # noqa: B017 - the call dies with the child
        call_tool(info.endpoint, "crash")
    restarted = events.wait_for("restarted")

    exited = events.wait_for("exited")
    assert exited.pid == info.pid and exited.detail["code"] == 3
    assert restarted.pid != info.pid
    assert call_tool(info.endpoint, "echo", text="back")["result"] == "back"


def test_a_command_that_does_not_exist_fails_the_start(
    processes: ServerProcesses, events: Events
) -> None:
    missing = "/nonexistent/mcp-server"
    listening = ServerSpec("missing-http", (missing, "--port", "{port}"), "http")
    bridged = ServerSpec("missing-stdio", (missing,), "stdio")

    with pytest.raises(ServerStartError) as direct:
        processes.ensure_running(POOL, listening, free_port(), HOST)
    with pytest.raises(ServerStartError) as through_bridge:
        processes.ensure_running(POOL, bridged, free_port(), HOST)

    assert "cannot start" in direct.value.reason
    assert "No such file" in direct.value.stderr_tail
    assert "exit code 127" in through_bridge.value.reason
    assert "cannot start" in through_bridge.value.stderr_tail
    assert (direct.value.name, direct.value.pool) == ("missing-http", POOL)
    assert [info.status for info in processes.status()] == ["failed", "failed"]
    assert not list(processes.records)
    for pid, _ in events.started:
        assert not control.group_alive(pid)


def test_a_server_that_crashes_at_start_fails_with_its_stderr(
    processes: ServerProcesses, events: Events
) -> None:
    spec = stdio_spec("crashing", env={"MCP_TEST_SERVER_CRASH_AT_START": "1"})

    with pytest.raises(ServerStartError) as failure:
        processes.ensure_running(POOL, spec, free_port(), HOST)

    assert "exited before its endpoint answered" in failure.value.reason
    assert "asked to crash at start" in failure.value.stderr_tail
    assert events.kinds() == ["started", "exited", "health_failed"]
    ((pid, _),) = events.started
    assert not control.group_alive(pid)


def test_a_start_slower_than_its_timeout_fails_and_leaves_nothing(
    processes: ServerProcesses, events: Events
) -> None:
    spec = http_spec("slow", "--delay-seconds", "60", timeout=1.5)
    port = free_port()
    began = time.monotonic()

    with pytest.raises(ServerStartError, match=r"did not answer MCP within 1\.5 s"):
        processes.ensure_running(POOL, spec, port, HOST)

    assert time.monotonic() - began < 10
    ((pid, _),) = events.started
    assert not control.group_alive(pid)
    assert refuses_connections(port)
    assert processes.status()[0].status == "failed"


def test_a_later_run_adopts_a_running_server_and_stops_what_is_not_expected(
    supervisors: Callable[..., ServerProcesses],
    events: Events,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec, port = http_spec(), free_port()
    first = supervisors()
    started = first.ensure_running(POOL, spec, port, HOST)
    with caplog.at_level(logging.INFO):
        first.close(stop_all=False)
    assert started.pid is not None and control.is_alive(started.pid)
    # The operator is told what was left running, and how to stop it instead.
    assert f"{spec.name} of pool {POOL}" in caplog.text
    assert "ALLOCATION_LEDGER_STOP_MCP_SERVERS_ON_EXIT=true" in caplog.text

    second = supervisors(catalog={spec.name: spec})
    reported = second.reconcile({(POOL, spec.name): port}, HOST)

    assert [e.kind for e in reported] == ["adopted"]
    adopted = second.info(POOL, spec.name)
    assert adopted is not None and adopted.pid == started.pid
    assert adopted.status == "running"
    assert len(events.of("started")) == 1
    assert call_tool(adopted.endpoint, "whoami")["result"] == started.pid
    assert second.ensure_running(POOL, spec, port, HOST).pid == started.pid

    reported = second.reconcile({}, HOST)

    assert [e.kind for e in reported] == ["stopped"]
    assert not control.group_alive(started.pid)
    assert refuses_connections(port)


def test_a_record_whose_process_is_gone_or_another_program_is_replaced(
    supervisors: Callable[..., ServerProcesses], tmp_path: Path
) -> None:
    spec = http_spec()
    gone = http_spec("gone")
    records = RunRecords(tmp_path / "run")
    finished = subprocess.Popen(["true"])
    finished.wait()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for name, pid in ((gone.name, finished.pid), (spec.name, stranger.pid)):
            port = free_port()
            records.write(
                RunRecord(
                    POOL,
                    name,
                    pid,
                    port,
                    HOST,
                    f"http://{HOST}:{port}/mcp",
                    tuple(spec.argv(HOST, port)),
                    control.start_ticks(pid),
                    "2026-01-01T00:00:00+00:00",
                )
            )
        processes = supervisors(catalog={spec.name: spec, gone.name: gone})
        expected = {(POOL, gone.name): free_port(), (POOL, spec.name): free_port()}

        reported = processes.reconcile(expected, HOST)

        discarded = {
            e.name: e.detail["reason"] for e in reported if e.kind == "discarded"
        }
        assert discarded == {
            gone.name: "its process is gone",
            spec.name: "its pid belongs to another program",
        }
        assert stranger.poll() is None  # another program's process is left alone
        for (pool, name), port in expected.items():
            info = processes.info(pool, name)
            assert info is not None and info.status == "running" and info.port == port
            assert call_tool(info.endpoint, "echo", text=name)["result"] == name
            record = json.loads(records.path(pool, name).read_text())
            assert record["pid"] == info.pid
    finally:
        stranger.kill()
        stranger.wait()


def test_a_port_taken_by_another_program_fails_the_start_at_once(
    processes: ServerProcesses, events: Events
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        other.bind((HOST, 0))
        other.listen()
        port = other.getsockname()[1]

        with pytest.raises(ServerStartError, match=f"port {port} .* already in use"):
            processes.ensure_running(POOL, http_spec(), port, HOST)

    assert events.kinds() == ["health_failed"] and not events.started


def test_it_refuses_to_block_a_running_event_loop(processes: ServerProcesses) -> None:
    async def start() -> None:
        processes.ensure_running(POOL, http_spec(), free_port(), HOST)

    with pytest.raises(RuntimeError, match="worker thread"):
        anyio.run(start)


def test_a_health_check_of_a_closed_port_says_why() -> None:
    result = check_endpoint_sync(f"http://{HOST}:{free_port()}/mcp", 5)

    assert not result.ok and result.tools == ()
    assert result.error
