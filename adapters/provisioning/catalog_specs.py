"""What the catalog's `[mcp_servers.NAME]` tables mean for the processes the
process provisioner runs: the supervisor's spec of each server (a bare
`python` program being the ledger's own interpreter), the address a server
listens on for the host its pool advertises, and the message that names the
servers a catalog has."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence

from allocation_ledger.adapters.config.entries import McpServerEntry
from allocation_ledger.adapters.provisioning.server_spec import ServerSpec

THIS_PYTHON = ("python", "python3")
"""Program names in a catalog command that mean the ledger's own interpreter."""


def own_interpreter(command: Sequence[str]) -> tuple[str, ...]:
    """`command` with a bare `python`/`python3` program replaced by the
    interpreter the ledger runs on (`sys.executable`), so a server installed
    beside the ledger (`python -m mcp_server_time`) starts whichever way the
    ledger was started (an MCP client's absolute path to the command, a
    service manager, an activated environment). A path is left as given."""
    if command and command[0] in THIS_PYTHON:
        return (sys.executable, *command[1:])
    return tuple(command)


def server_spec(name: str, entry: McpServerEntry) -> ServerSpec:
    """The supervisor's spec of the catalog's `[mcp_servers.NAME]` table;
    a bare `python` program is the ledger's own interpreter."""
    return ServerSpec(
        name=name,
        command=own_interpreter(entry.command),
        transport=entry.transport,
        path=entry.path,
        env=dict(entry.env),
        start_timeout_seconds=entry.start_timeout_seconds,
        idle_timeout_seconds=float(entry.idle_timeout_seconds),
    )


def bind_host(advertise_host: str) -> str:
    """Where a server listens so that its advertised endpoint reaches it.

    A loopback name or address (`localhost`, 127.0.0.1, ::1) keeps it on
    this machine; any other host name or address means other machines
    connect, so it listens on every interface (0.0.0.0, or :: for IPv6).
    """
    if advertise_host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(advertise_host)
    except ValueError:
        return "0.0.0.0"  # the operator advertised it to other machines
    if address.is_loopback:
        return str(address)
    return "::" if address.version == 6 else "0.0.0.0"


def unknown_servers_message(names: Sequence[str], known: Sequence[str]) -> str:
    """`unknown MCP server "gitlab": this ledger's catalog has filesystem, time`
    (`unknown MCP servers "a", "b": ...` for several)."""
    has = ", ".join(sorted(known)) if known else "no MCP servers"
    quoted = ", ".join(f'"{name}"' for name in names)
    plural = "s" if len(names) > 1 else ""
    return f"unknown MCP server{plural} {quoted}: this ledger's catalog has {has}"
