"""Serving the MCP server over stdio, with an answer for every malformed line.

The SDK's stdio transport reads one JSON-RPC message per line; a line it
cannot read (not JSON, a lone UTF-16 surrogate such as `"\\ud800"`, JSON that is
no JSON-RPC message) reaches the server as an exception, which is dropped, so
the client would wait for ever. JSON-RPC 2.0 asks for an error reply instead,
as the HTTP transport gives: -32700 (parse error) for a line that is not JSON,
-32600 (invalid request) for JSON that is not a message, with the request's
`id` when one can be read and `null` otherwise. This thin layer sits between
the SDK's transport and the server and writes those replies; everything else
passes through unchanged, and the server keeps serving.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp_types import (
    INVALID_REQUEST,
    PARSE_ERROR,
    ErrorData,
    JSONRPCError,
    RequestId,
)
from pydantic import ValidationError

logger = logging.getLogger("allocation_ledger.mcp")

DETAIL_CHARACTERS = 200
"""How much of the parser's explanation a reply (and the log line) repeats."""


async def run_stdio(server: MCPServer[Any]) -> None:
    """Serve `server` over stdin and stdout until stdin closes."""
    # The SDK runs a server on given streams only through its low-level server.
    lowlevel = server._lowlevel_server
    async with stdio_server() as (incoming, replies):
        forward, messages = anyio.create_memory_object_stream[
            SessionMessage | Exception
        ](0)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_answer_malformed, incoming, forward, replies)
            async with messages:
                await lowlevel.run(
                    messages, replies, lowlevel.create_initialization_options()
                )


async def _answer_malformed(
    incoming: ObjectReceiveStream[SessionMessage | Exception],
    forward: ObjectSendStream[SessionMessage | Exception],
    replies: ObjectSendStream[SessionMessage],
) -> None:
    """Pass messages on to the server; answer each unreadable line."""
    async with forward:
        async for item in incoming:
            if not isinstance(item, Exception):
                await forward.send(item)
                continue
            error = malformed_reply(item)
            if error is None:
                continue
            logger.warning(
                "answered a malformed line on stdin: %s", error.error.message
            )
            try:
                await replies.send(SessionMessage(error))
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                return


def malformed_reply(problem: Exception) -> JSONRPCError | None:
    """The JSON-RPC error for a line the transport could not read, or None
    for a blank line (nothing was sent, nothing to answer)."""
    if not isinstance(problem, ValidationError):
        return _error(None, PARSE_ERROR, "Parse error", str(problem))
    first = problem.errors()[0] if problem.error_count() else None
    if first is None or first["type"] == "json_invalid":
        line = first.get("input") if first else None
        if isinstance(line, str) and not line.strip():
            return None
        detail = first["msg"] if first else str(problem)
        return _error(None, PARSE_ERROR, "Parse error", detail)
    return _error(
        _request_id(problem),
        INVALID_REQUEST,
        "Invalid Request",
        "the line is JSON but not a JSON-RPC 2.0 request, notification or response",
    )


def _request_id(problem: ValidationError) -> RequestId | None:
    """The `id` of the JSON object the line held, when it has a usable one."""
    for error in problem.errors():
        message = error.get("input")
        if isinstance(message, dict):
            found = message.get("id")
            if isinstance(found, str | int) and not isinstance(found, bool):
                return found
            return None
    return None


def _error(
    request_id: RequestId | None, code: int, title: str, detail: str
) -> JSONRPCError:
    if len(detail) > DETAIL_CHARACTERS:
        detail = detail[:DETAIL_CHARACTERS] + "…"
    return JSONRPCError(
        jsonrpc="2.0",
        id=request_id,
        error=ErrorData(code=code, message=f"{title}: {detail}"),
    )
