"""The MCP server a bench measures, and the clients it measures with.

`serve` runs the real server (`adapters.mcp.server.http_app`, served by
uvicorn through `serve_http`, on a SQLite file, with the endpoints
provisioner) with one extra tool, `bench_noop`, that returns a constant: the
baseline of item 4 (bench/mcp_overhead.py), registered on the same server.
`server_process` runs it in a process of its own on a free port and waits
until it answers /healthz; `mcp_client` opens one client session on it (the
official `mcp.Client`); `call_checked` calls a tool and raises RuntimeError
when the call failed.

`python -m bench.mcp_server serve DATABASE PORT` runs the server alone (what
`server_process` starts; `python -m bench.mcp_overhead serve` is the same).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, open_bench_service, sqlite_settings

NOOP = "bench_noop"
POOL_ROOM = {"cpu": 256, "memory": 1_048_576, "workers": 256}
"""Room enough that 16 clients' requests are always granted."""


def mcp_server_missing() -> str | None:
    """None when adapters.mcp.server can be built, else why not."""
    try:
        from allocation_ledger.adapters.mcp.server import http_app  # noqa: F401
    except Exception as error:  # noqa: BLE001 - reported as "not measured"
        return f"adapters.mcp.server is not importable: {error!r}"
    return None


# -- the server -------------------------------------------------------------------


def serve(database: Path, port: int) -> None:
    """Serve the ledger over streamable HTTP on 127.0.0.1:`port`, with the
    no-op tool added to the server `http_app` builds."""
    import anyio

    from allocation_ledger.adapters.mcp import server as server_module

    service = open_bench_service(sqlite_settings(database))
    build = server_module.build_server

    def build_with_noop(*args: Any, **kwargs: Any) -> Any:
        server = build(*args, **kwargs)

        async def bench_noop() -> dict[str, str]:
            """Does nothing: the round-trip baseline."""
            return {"status": "ok"}

        server.add_tool(bench_noop, name=NOOP)
        return server

    # http_app builds its server through this module attribute: the app is
    # the real one, with one more tool.
    server_module.build_server = build_with_noop
    try:
        app = server_module.http_app(service, verifier=None)
    finally:
        server_module.build_server = build
    try:
        anyio.run(
            lambda: server_module.serve_http(
                app, host="127.0.0.1", port=port, log_level="WARNING"
            )
        )
    except KeyboardInterrupt:
        pass
    finally:
        service.close()


@contextlib.contextmanager
def server_process(
    database: Path, *, source: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The server in a subprocess on a free port; its MCP URL. `source`: a
    folder whose `allocation_ledger` package the server runs instead of the
    installed one (see `compare`)."""
    import socket

    import httpx2

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "ALLOCATION_LEDGER_LOG_LEVEL": "WARNING"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.mcp_server", "serve", str(database), str(port)],
        env=env,
        cwd=str(BENCH_DIR.parent),
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                msg = f"the bench server exited with {process.returncode}"
                raise RuntimeError(msg)
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                msg = "the bench server did not become healthy in 60 s"
                raise RuntimeError(msg)
            time.sleep(0.1)
        yield base + "/mcp", process
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the clients ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_client(url: str) -> AsyncIterator[Any]:
    """An `mcp.Client` holding one persistent session with the server at
    `url` (its MCP URL), over its own HTTP connection pool."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with (
        httpx2.AsyncClient(timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        yield client


def _failed(result: Any) -> bool:
    return bool(getattr(result, "is_error", False) or getattr(result, "isError", False))


async def call_checked(client: Any, tool: str, arguments: dict[str, Any]) -> Any:
    """Call `tool`; its structured result. Raises RuntimeError when the
    call failed (a bench must not measure failures)."""
    result = await client.call_tool(tool, arguments)
    if _failed(result):
        msg = f"{tool} failed: {result}"
        raise RuntimeError(msg)
    return result.structured_content


async def set_room(url: str) -> None:
    """Give the default pool of the server at `url` room enough for every
    client's requests (`POOL_ROOM`)."""
    async with mcp_client(url) as client:
        await call_checked(client, "set_capacity", dict(POOL_ROOM))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(Path(sys.argv[2]), int(sys.argv[3]))
        return
    print("usage: python -m bench.mcp_server serve DATABASE PORT")


if __name__ == "__main__":
    main()
