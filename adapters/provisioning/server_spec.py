"""What an MCP server process is: how to start it, and how to restart it."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

BRIDGE_MODULE = "allocation_ledger.adapters.provisioning.bridge"

ServerTransport = Literal["stdio", "http"]


@dataclass(frozen=True)
class ServerSpec:
    """One MCP server of the catalog.

    - `command`: the argv that starts the server (never run through a shell;
      kept as a tuple).
      For `transport="stdio"` it speaks MCP on stdin/stdout and the supervisor
      starts it behind the stdio bridge, which serves it on the port. For
      `transport="http"` it listens on the port itself: the placeholders
      `{port}` and `{host}` in any argument are replaced with the values.
    - `path`: the HTTP path of the MCP endpoint (default `/mcp`).
    - `env`: variables set over the supervisor's own environment.
    - `start_timeout_seconds`: how long a start may take until the endpoint
      answers MCP (seconds).
    - `idle_timeout_seconds`: how long the ledger keeps the server once no
      allocation names it (seconds); carried for the ledger, the supervisor
      itself never stops a server on its own.
    """

    name: str
    command: Sequence[str]
    transport: ServerTransport = "stdio"
    path: str = "/mcp"
    env: Mapping[str, str] = field(default_factory=dict)
    start_timeout_seconds: float = 30.0
    idle_timeout_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a server needs a name")
        if isinstance(self.command, str):
            raise TypeError("command is an argv (a sequence of strings), not a string")
        object.__setattr__(self, "command", tuple(self.command))
        if not self.command:
            raise ValueError(f"server {self.name!r} has an empty command")
        if self.transport not in ("stdio", "http"):
            raise ValueError(f"unknown transport {self.transport!r}")
        if not self.path.startswith("/"):
            object.__setattr__(self, "path", "/" + self.path)
        object.__setattr__(self, "env", dict(self.env))
        if self.start_timeout_seconds <= 0:
            raise ValueError("start_timeout_seconds must be positive")

    def argv(self, host: str, port: int) -> list[str]:
        """The command line the supervisor runs for this server on host:port."""
        if self.transport == "stdio":
            return [
                sys.executable,
                "-m",
                BRIDGE_MODULE,
                "--host",
                host,
                "--port",
                str(port),
                "--path",
                self.path,
                "--",
                *self.child_argv(host, port),
            ]
        return self.child_argv(host, port)

    def child_argv(self, host: str, port: int) -> list[str]:
        """The server's own command with `{port}` and `{host}` filled in, for
        both transports (`{{` and `}}` are literal braces, as in the catalog)."""
        values = {"port": port, "host": host}
        return [part.format_map(values) for part in self.command]

    def endpoint(self, host: str, port: int) -> str:
        """The URL of the MCP endpoint on host:port."""
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}{self.path}"


@dataclass(frozen=True)
class RestartPolicy:
    """How the watcher restarts a server that exited while it should run.

    At most `max_restarts` restarts within `window_seconds`; the n-th restart
    in the window waits `backoff_seconds * 2**(n-1)` first (0.5 s, 1 s, 2 s by
    default). A server that exits once more is marked failed and left alone.
    """

    max_restarts: int = 3
    window_seconds: float = 60.0
    backoff_seconds: float = 0.5

    def delay(self, restarts_in_window: int) -> float:
        """Seconds to wait before the next restart, given those already made."""
        return self.backoff_seconds * (1 << restarts_in_window)
