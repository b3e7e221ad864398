"""A tiny MCP server for the process tests, built on the SDK's MCPServer.

Tools: `echo(text)` answers the text; `whoami()` answers this process's pid;
`env(name)` answers an environment variable; `crash()` exits the process at
once (exit code 3). Also a resource `test://greeting` and a prompt `greet`.

    python tests/mcp_test_server.py [--transport stdio|http] [--host H]
        [--port N] [--path /mcp] [--delay-seconds S] [--crash-at-start]

`--delay-seconds` (or MCP_TEST_SERVER_DELAY_SECONDS) sleeps before serving;
`--crash-at-start` (or MCP_TEST_SERVER_CRASH_AT_START=1) writes a line to
stderr and exits with code 2 before serving.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from mcp.server.mcpserver import MCPServer

CRASH_EXIT_CODE = 3
START_CRASH_EXIT_CODE = 2

server = MCPServer("process-test-server", log_level="WARNING")


@server.tool()
def echo(text: str) -> str:
    """Answer the text it was given."""
    return text


@server.tool()
def whoami() -> int:
    """Answer the pid of the process that serves this tool."""
    return os.getpid()


@server.tool()
def env(name: str) -> str:
    """Answer the value of an environment variable ('' when unset)."""
    return os.environ.get(name, "")


@server.tool()
def crash() -> str:
    """Exit the process at once, without answering."""
    sys.stderr.write("mcp_test_server: crash() called, exiting\n")
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)


@server.resource("test://greeting", mime_type="text/plain")
def greeting() -> str:
    """A fixed text."""
    return "hello from the test server"


@server.prompt()
def greet(name: str) -> str:
    """A prompt that greets `name`."""
    return f"Say hello to {name}."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--path", default="/mcp")
    parser.add_argument(
        "--delay-seconds",
        type=float,
        default=float(os.environ.get("MCP_TEST_SERVER_DELAY_SECONDS", "0")),
    )
    parser.add_argument(
        "--crash-at-start",
        action="store_true",
        default=os.environ.get("MCP_TEST_SERVER_CRASH_AT_START") == "1",
    )
    args = parser.parse_args(argv)
    if args.crash_at_start:
        sys.stderr.write("mcp_test_server: asked to crash at start\n")
        sys.stderr.flush()
        sys.exit(START_CRASH_EXIT_CODE)
    if args.delay_seconds > 0:
        time.sleep(args.delay_seconds)
    if args.transport == "stdio":
        server.run("stdio")
    else:
        server.run(
            "streamable-http",
            host=args.host,
            port=args.port,
            streamable_http_path=args.path,
        )


if __name__ == "__main__":
    main()
