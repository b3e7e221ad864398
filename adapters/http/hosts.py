"""Which Host and Origin headers the MCP endpoint accepts over HTTP.

A web page can make its own name resolve to the ledger's address (DNS
rebinding) and then talk to the ledger from the visitor's browser; its
requests then carry the page's name in `Host` and its origin in `Origin`.
So, whatever address the server is bound to, a request to the MCP endpoint
whose Host is not one of the ledger's names is refused (421), and one whose
Origin (sent by browsers) is not an allowed origin is refused (403).

Always allowed: the loopback names (`127.0.0.1`, `localhost`, `[::1]`) and the
address the server is bound to, on any port, as hosts, and as `http://` or
`https://` origins. The operator adds the names clients use to reach it (a
reverse proxy's public name) in settings: a host given without a port is
allowed with any port and without one; `name:*` means any port.

Kept apart from the MCP SDK so that settings can check these values; the
server turns them into the SDK's `TransportSecuritySettings`, checked on the
MCP endpoint by the SDK and, in front of every path but the health check,
by `host_check.HostCheck`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
_NAME = r"(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
_PORT = r"(?::(?:[0-9]{1,5}|\*))?"
_HOST = re.compile(rf"^{_NAME}{_PORT}$")
_ORIGIN = re.compile(rf"^https?://{_NAME}{_PORT}$")


def host_name(address: str) -> str:
    """An address as it appears in a Host header: IPv6 in brackets, lower case.

    `::1` -> `[::1]`; `Ledger.Example.COM` -> `ledger.example.com`.
    """
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address.lower()
    return f"[{parsed}]" if parsed.version == 6 else str(parsed)


def allowed_host(value: str) -> str:
    """One allowed Host entry, checked: `name`, `name:port` or `name:*`.

    Raises ValueError naming the entry when it is not one of those shapes
    (a URL, a path or a space is a mistake).
    """
    entry = value.strip()
    if ":" in entry and not entry.startswith("["):
        with contextlib.suppress(ValueError):  # a bare IPv6 address
            entry = host_name(str(ipaddress.IPv6Address(entry)))
    entry = entry.lower()
    if not _HOST.match(entry):
        msg = (
            f"allowed host {value.strip()!r} is not a host name or address with an "
            "optional :port or :* (e.g. ledger.example.com, 10.0.0.5:8765)"
        )
        raise ValueError(msg)
    return entry


def allowed_origin(value: str) -> str:
    """One allowed Origin entry, checked: `scheme://name[:port|:*]`.

    Raises ValueError naming the entry for anything else (a path, a trailing
    slash, another scheme).
    """
    entry = value.strip().lower()
    if not _ORIGIN.match(entry):
        msg = (
            f"allowed origin {value.strip()!r} is not http(s)://name with an optional "
            ":port or :* (e.g. https://ledger.example.com), without a path"
        )
        raise ValueError(msg)
    return entry


def _has_port(entry: str) -> bool:
    return bool(re.search(r":(?:[0-9]+|\*)$", entry)) and not entry.endswith("]")


def _unique(entries: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(entries))


def host_patterns(bind: str, extra: Iterable[str]) -> list[str]:
    """Every Host the endpoint accepts, as patterns the SDK matches.

    `bind` is the address the server listens on; `extra` the configured
    entries. A name without a port stands for itself and `name:*`.
    """
    names = [*LOOPBACK_NAMES, host_name(bind), *(allowed_host(e) for e in extra)]
    patterns: list[str] = []
    for name in filter(None, names):
        patterns.extend([name] if _has_port(name) else [name, f"{name}:*"])
    return _unique(patterns)


def origin_patterns(bind: str, extra: Iterable[str]) -> list[str]:
    """Every Origin the endpoint accepts, as patterns the SDK matches: the
    loopback names and `bind` over http and https on any port, then `extra`.
    """
    patterns: list[str] = []
    for name in filter(None, (*LOOPBACK_NAMES, host_name(bind))):
        for scheme in ("http", "https"):
            patterns.extend([f"{scheme}://{name}", f"{scheme}://{name}:*"])
    patterns.extend(allowed_origin(e) for e in extra)
    return _unique(patterns)
