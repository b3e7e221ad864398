"""What `allocation-ledger demo` sets up before it drives the server: its
catalog (one MCP server, `time`, with a short idle timeout), the ports it may
be given, and the environment of the ledger server it starts."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings

SERVER = "time"
"""The one MCP server of the demo's catalog: the reference `mcp-server-time`."""
IDLE_TIMEOUT_SECONDS = 5
"""The demo's idle timeout: short, so that the idle stop is seen."""
IDLE_CHECK_INTERVAL_SECONDS = 0.5
IDLE_STOP_BOUND_SECONDS = IDLE_TIMEOUT_SECONDS + 20.0
"""How long the demo waits for the idle server to be stopped before failing."""


def server_command() -> tuple[str, list[str]]:
    return sys.executable, ["-m", "allocation_ledger.adapters.cli", "serve"]


def demo_catalog(mcp_ports: tuple[int, int] | None = None) -> str:
    """The demo's config file: one MCP server, `time`, run by this Python.

    The same shape as examples/ledger.toml, with this interpreter (so the
    server runs in the environment the ledger is installed in) and a short
    idle timeout. `mcp_ports`: (first, last) of the default pool's MCP
    server ports (None: the pool's own, 9000-9099 on a new ledger).
    """
    command = json.dumps([sys.executable, "-m", "mcp_server_time"])
    text = (
        "# Written by `allocation-ledger demo` for its own ledger server.\n"
        f"idle_check_interval_seconds = {IDLE_CHECK_INTERVAL_SECONDS}\n"
        "stop_mcp_servers_on_exit = true\n"
        "\n"
        f"[mcp_servers.{SERVER}]\n"
        f"command = {command}\n"
        'transport = "stdio"\n'
        f"idle_timeout_seconds = {IDLE_TIMEOUT_SECONDS}\n"
    )
    if mcp_ports is not None:
        text += f"\n[pools.default]\nmcp_ports = [{mcp_ports[0]}, {mcp_ports[1]}]\n"
    return text


def parse_port_range(text: str) -> tuple[int, int]:
    """`FIRST-LAST` (e.g. 9000-9099) as (first, last), both included.

    Raises ValueError with a message for the operator when it is not two
    port numbers (1-65535), the first not after the last.
    """
    first, dash, last = text.partition("-")
    try:
        span = (int(first), int(last))
    except ValueError:
        span = None
    if not dash or span is None:
        msg = f"expected FIRST-LAST, e.g. 9000-9099, got {text!r}"
        raise ValueError(msg)
    if not 1 <= span[0] <= span[1] <= 65_535:
        msg = f"expected ports 1-65535 with FIRST <= LAST, got {text!r}"
        raise ValueError(msg)
    return span


def child_env(settings: Settings, config: Path) -> dict[str, str]:
    """The settings the served ledger should see: this process's own store
    and database, with the demo's catalog (config file) instead of any other."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
    env.setdefault(ENV_PREFIX + "LOG_LEVEL", "WARNING")
    env[ENV_PREFIX + "CONFIG"] = str(config)
    env[ENV_PREFIX + "STORE"] = settings.store
    if settings.store == "sqlite":
        env[ENV_PREFIX + "DATABASE"] = str(settings.database.resolve())
    # Environment variables win over the file: the demo's own, whatever is set.
    env[ENV_PREFIX + "IDLE_CHECK_INTERVAL_SECONDS"] = str(IDLE_CHECK_INTERVAL_SECONDS)
    env[ENV_PREFIX + "STOP_MCP_SERVERS_ON_EXIT"] = "true"
    for name in ("PYTHONPATH", "HOME", "TMPDIR", "PATH", "LANG", "TZ"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env
