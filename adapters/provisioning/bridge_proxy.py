"""The MCP half of the stdio bridge: a client of the child, a server for HTTP callers.

`child_transport` speaks newline-delimited JSON-RPC over a child process's
stdin and stdout (the SDK's own `stdio_client` would start the child in a
session of its own, out of reach of the supervisor's process-group signals).
`proxy_server` is a low-level `Server` whose handlers forward each request to
the connected child session, and `serve_http` serves it as streamable HTTP.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import mcp_types as types
import uvicorn
from anyio.abc import Process
from mcp.client import Client
from mcp.client._transport import TransportStreams
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.shared.message import SessionMessage

logger = logging.getLogger(__name__)

Context = ServerRequestContext[Any]


@contextlib.asynccontextmanager
async def child_transport(process: Process) -> AsyncIterator[TransportStreams]:
    """Streams of JSON-RPC messages to and from `process` (stdin/stdout pipes).

    The read stream ends when the child closes its stdout (it exited); lines
    that are not JSON-RPC reach the session as exceptions, as with the SDK's
    stdio client.
    """
    assert process.stdin is not None and process.stdout is not None
    child_in, child_out = process.stdin, process.stdout
    read_writer, read_stream = anyio.create_memory_object_stream[
        SessionMessage | Exception
    ](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def pump_stdout() -> None:
        async with read_writer:
            buffer = b""
            with contextlib.suppress(
                anyio.EndOfStream,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
                OSError,
            ):
                async for chunk in child_out:
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        if line.strip():
                            await read_writer.send(_parse_line(line))

    async def pump_stdin() -> None:
        async with write_reader:
            with contextlib.suppress(
                anyio.ClosedResourceError, anyio.BrokenResourceError, OSError
            ):
                async for message in write_reader:
                    data = message.message.model_dump_json(
                        by_alias=True, exclude_unset=True
                    )
                    await child_in.send(data.encode() + b"\n")
        # The child no longer reads: end the session's read side too.
        await read_writer.aclose()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(pump_stdout)
        tasks.start_soon(pump_stdin)
        try:
            yield read_stream, write_stream
        finally:
            tasks.cancel_scope.cancel()
            for stream in (read_stream, write_stream):
                await stream.aclose()


def _parse_line(line: bytes) -> SessionMessage | Exception:
    try:
        message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
    except ValueError as exc:
        logger.warning("bridge: the child wrote a line that is not JSON-RPC")
        return exc
    return SessionMessage(message)


def _without_meta(params: types.RequestParams) -> Any:
    """The params as forwarded: `_meta` belongs to the caller's connection."""
    return params.model_copy(update={"meta": None})


def proxy_server(upstream: Client) -> Server[Any]:
    """A low-level Server that forwards tools, resources, prompts and completion.

    Only what the child advertises is registered, so the bridge advertises
    the child's capabilities. Errors the child answers (`MCPError`) reach the
    caller unchanged; progress the child reports on a tool call reaches the
    caller when it asked for progress.
    """
    session = upstream.session
    capabilities = upstream.server_capabilities
    info = upstream.server_info
    handlers: dict[str, Any] = {}

    if capabilities.tools is not None:

        async def list_tools(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListToolsResult:
            forwarded = _without_meta(params) if params is not None else None
            return await session.send_request(
                types.ListToolsRequest(params=forwarded), types.ListToolsResult
            )

        async def call_tool(
            ctx: Context, params: types.CallToolRequestParams
        ) -> types.CallToolResult:
            async def progress(
                progress: float, total: float | None, message: str | None
            ) -> None:
                await ctx.session.report_progress(progress, total, message)

            return await session.send_request(
                types.CallToolRequest(params=_without_meta(params)),
                types.CallToolResult,
                progress_callback=progress,
            )

        handlers.update(on_list_tools=list_tools, on_call_tool=call_tool)

    if capabilities.resources is not None:

        async def list_resources(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListResourcesResult:
            forwarded = _without_meta(params) if params is not None else None
            return await session.send_request(
                types.ListResourcesRequest(params=forwarded), types.ListResourcesResult
            )

        async def list_resource_templates(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListResourceTemplatesResult:
            forwarded = _without_meta(params) if params is not None else None
            return await session.send_request(
                types.ListResourceTemplatesRequest(params=forwarded),
                types.ListResourceTemplatesResult,
            )

        async def read_resource(
            ctx: Context, params: types.ReadResourceRequestParams
        ) -> types.ReadResourceResult:
            return await session.send_request(
                types.ReadResourceRequest(params=_without_meta(params)),
                types.ReadResourceResult,
            )

        handlers.update(
            on_list_resources=list_resources,
            on_list_resource_templates=list_resource_templates,
            on_read_resource=read_resource,
        )

    if capabilities.prompts is not None:

        async def list_prompts(
            ctx: Context, params: types.PaginatedRequestParams | None
        ) -> types.ListPromptsResult:
            forwarded = _without_meta(params) if params is not None else None
            return await session.send_request(
                types.ListPromptsRequest(params=forwarded), types.ListPromptsResult
            )

        async def get_prompt(
            ctx: Context, params: types.GetPromptRequestParams
        ) -> types.GetPromptResult:
            return await session.send_request(
                types.GetPromptRequest(params=_without_meta(params)),
                types.GetPromptResult,
            )

        handlers.update(on_list_prompts=list_prompts, on_get_prompt=get_prompt)

    if capabilities.completions is not None:

        async def complete(
            ctx: Context, params: types.CompleteRequestParams
        ) -> types.CompleteResult:
            return await session.send_request(
                types.CompleteRequest(params=_without_meta(params)),
                types.CompleteResult,
            )

        handlers.update(on_completion=complete)

    return Server(
        info.name if info is not None else "mcp-bridge",
        version=info.version if info is not None else "",
        instructions=upstream.instructions,
        **handlers,
    )


class _HTTPServer(uvicorn.Server):
    """uvicorn without its signal handlers: the bridge handles SIGTERM itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(server: Server[Any], host: str, port: int, path: str) -> uvicorn.Server:
    """A uvicorn server for `server` as streamable HTTP on `host:port` at `path`.

    Await `.serve()` to run it; set `.should_exit` to stop it.
    """
    app = server.streamable_http_app(streamable_http_path=path, host=host)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    return _HTTPServer(config)
