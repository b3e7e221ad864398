"""Does an endpoint answer MCP? The official client connects and lists its tools."""

from __future__ import annotations

import time
from dataclasses import dataclass

import anyio
from mcp.client import Client

MAX_TOOL_PAGES = 20


@dataclass(frozen=True)
class HealthResult:
    """The answer of one check of an MCP endpoint.

    `ok` is true when the client connected (at whatever protocol version it
    negotiated: `protocol_version`) and listed the tools (`tools`, their names
    in the server's order). Otherwise `error` says what went wrong, in one
    line, and `timed_out` whether it was the end of the time given (no
    answer at all) rather than a wrong answer or a refused connection.
    `elapsed_seconds` is the time the check took.
    """

    url: str
    ok: bool
    tools: tuple[str, ...] = ()
    protocol_version: str | None = None
    server_name: str | None = None
    error: str | None = None
    elapsed_seconds: float = 0.0
    timed_out: bool = False


async def check_endpoint(url: str, timeout_seconds: float = 5.0) -> HealthResult:
    """Connect to the streamable-HTTP endpoint `url` and list its tools.

    Gives up after `timeout_seconds` (connect, handshake and listing
    together). Never raises for a failed check (refused connection, HTTP
    error, MCP error, timeout): the result says `ok=False` and why. Follows
    tool-list pagination up to 20 pages.
    """
    started = time.monotonic()
    version: str | None = None
    server_name: str | None = None
    try:
        with anyio.fail_after(timeout_seconds):
            async with Client(
                url, read_timeout_seconds=timeout_seconds, cache=None
            ) as client:
                version = client.protocol_version
                info = client.server_info
                server_name = info.name if info is not None else None
                names: list[str] = []
                cursor: str | None = None
                for _ in range(MAX_TOOL_PAGES):
                    listing = await client.list_tools(cursor=cursor)
                    names.extend(tool.name for tool in listing.tools)
                    cursor = listing.next_cursor
                    if cursor is None:
                        break
    except TimeoutError:
        return HealthResult(
            url=url,
            ok=False,
            protocol_version=version,
            server_name=server_name,
            error=f"no answer within {timeout_seconds:g} s",
            elapsed_seconds=time.monotonic() - started,
            timed_out=True,
        )
    except Exception as exc:  # noqa: BLE001 - a failed check is an answer, not a crash
        return HealthResult(
            url=url,
            ok=False,
            protocol_version=version,
            server_name=server_name,
            error=describe_error(exc),
            elapsed_seconds=time.monotonic() - started,
        )
    return HealthResult(
        url=url,
        ok=True,
        tools=tuple(names),
        protocol_version=version,
        server_name=server_name,
        elapsed_seconds=time.monotonic() - started,
    )


def check_endpoint_sync(url: str, timeout_seconds: float = 5.0) -> HealthResult:
    """`check_endpoint` from synchronous code, in its own event loop.

    Call it from a thread that runs no event loop (a worker thread, or the
    main thread of a synchronous program); from inside a running loop, await
    `check_endpoint` instead (this raises RuntimeError there).
    """
    return anyio.run(check_endpoint, url, timeout_seconds)


def describe_error(exc: BaseException) -> str:
    """One line for an exception; the leaves of an exception group, joined."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_error(inner) for inner in exc.exceptions)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
