"""Serve a stdio MCP server as streamable HTTP: the bridge process.

    python -m allocation_ledger.adapters.provisioning.bridge \\
        --host 127.0.0.1 --port 9000 --path /mcp -- COMMAND [ARG...]

The bridge starts COMMAND (an argv, never through a shell) with the bridge's
own environment, in the bridge's process group, so a signal to the group
reaches both. The child's stderr is the bridge's stderr. The bridge connects
to the child as an MCP client (the initialize handshake by default), then
listens on HTTP and forwards every request to the child (see bridge_proxy).
It listens only once the child has answered the handshake, so an endpoint
that answers means a child that answers.

Exit codes: 0 after SIGTERM or SIGINT (a requested stop); the child's exit
code when the child exits (1 if that was 0, 128+N if signal N ended it);
127 when COMMAND cannot be started; 1 when the handshake with the child
fails or the HTTP port cannot be bound.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
from anyio.abc import Process

if TYPE_CHECKING:
    import uvicorn

EXIT_CANNOT_START = 127
EXIT_FAILED = 1
STOP_GRACE_SECONDS = 3.0
CHILD_POLL_SECONDS = 0.05

logger = logging.getLogger("mcp-bridge")


@dataclass(frozen=True)
class BridgeOptions:
    """What to serve where: `command` is the child's argv (non-empty)."""

    command: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 9000
    path: str = "/mcp"
    upstream_mode: str = "legacy"


@dataclass
class _Outcome:
    child_code: int | None = None
    stop_signal: int | None = None
    http: uvicorn.Server | None = field(default=None, repr=False)

    def exit_code(self) -> int:
        if self.stop_signal is not None:
            return 0
        code = self.child_code
        if code is None:
            return EXIT_FAILED
        if code < 0:
            return 128 - code
        return code or EXIT_FAILED


def parse_args(argv: Sequence[str]) -> BridgeOptions:
    """Options from a command line; exits with code 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m allocation_ledger.adapters.provisioning.bridge",
        description="Serve a stdio MCP server (COMMAND) as streamable HTTP.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mcp")
    parser.add_argument(
        "--upstream-mode",
        default="legacy",
        help="how to connect to the child: legacy (initialize handshake) or auto",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(list(argv))
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        parser.error("a COMMAND after -- is required")
    return BridgeOptions(
        command=tuple(command),
        host=args.host,
        port=args.port,
        path=args.path if args.path.startswith("/") else "/" + args.path,
        upstream_mode=args.upstream_mode,
    )


async def run_bridge(options: BridgeOptions) -> int:
    """Start the child, serve it until it exits or a stop signal; the exit code."""
    try:
        process = await anyio.open_process(
            list(options.command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,
            env=dict(os.environ),
        )
    except OSError as exc:
        logger.error("cannot start %r: %s", options.command[0], exc)
        return EXIT_CANNOT_START
    logger.info("started %s (pid %d)", " ".join(options.command), process.pid)
    outcome = _Outcome()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_watch_child, process, outcome, tasks.cancel_scope)
            tasks.start_soon(_watch_signals, outcome, tasks.cancel_scope)
            try:
                await _serve(process, options, outcome)
            except Exception as exc:  # noqa: BLE001 - reported, then the bridge exits
                if outcome.child_code is None:
                    logger.error("serving failed: %s", _describe(exc))
            except SystemExit:  # uvicorn exits this way when it cannot bind
                logger.error("cannot listen on %s:%d", options.host, options.port)
            tasks.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop_child(process, outcome)
    return outcome.exit_code()


async def _serve(process: Process, options: BridgeOptions, outcome: _Outcome) -> None:
    # Imported only now: the child starts up while the SDK loads.
    from mcp.client import Client

    from allocation_ledger.adapters.provisioning import bridge_proxy

    transport = bridge_proxy.child_transport(process)
    async with Client(transport, mode=options.upstream_mode, cache=None) as upstream:
        server = bridge_proxy.proxy_server(upstream)
        http = bridge_proxy.http_server(
            server, options.host, options.port, options.path
        )
        outcome.http = http
        logger.info(
            "serving on http://%s:%d%s", options.host, options.port, options.path
        )
        await http.serve()


async def _watch_child(
    process: Process, outcome: _Outcome, scope: anyio.CancelScope
) -> None:
    while process.returncode is None:
        await anyio.sleep(CHILD_POLL_SECONDS)
    outcome.child_code = process.returncode
    if outcome.stop_signal is None:
        logger.error("the child exited with code %d", process.returncode)
    if outcome.http is not None:
        outcome.http.should_exit = True
        await anyio.sleep(STOP_GRACE_SECONDS / 3)
    scope.cancel()


async def _watch_signals(outcome: _Outcome, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            outcome.stop_signal = signum
            break
    logger.info("stopping on signal %d", outcome.stop_signal)
    if outcome.http is not None:
        outcome.http.should_exit = True
        await anyio.sleep(STOP_GRACE_SECONDS)
    scope.cancel()


async def _stop_child(process: Process, outcome: _Outcome) -> None:
    """Close the child's stdin, then SIGTERM, then SIGKILL, each after a grace."""
    if process.stdin is not None:
        with contextlib.suppress(
            OSError, anyio.BrokenResourceError, anyio.ClosedResourceError
        ):
            await process.stdin.aclose()
    for escalate in (process.terminate, process.kill, None):
        with anyio.move_on_after(STOP_GRACE_SECONDS / 2):
            while process.returncode is None:
                await anyio.sleep(CHILD_POLL_SECONDS)
        if process.returncode is not None or escalate is None:
            break
        try:
            escalate()
        except ProcessLookupError:
            break
    if outcome.child_code is None:
        outcome.child_code = process.returncode


def _describe(exc: BaseException) -> str:
    """Leaf exceptions of a group, one line each."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bridge from a command line (sys.argv when argv is None)."""
    options = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="mcp-bridge[%(process)d] %(levelname)s %(message)s",
    )
    logger.setLevel(logging.INFO)
    return anyio.run(run_bridge, options)


if __name__ == "__main__":
    sys.exit(main())
