"""The HTTP server's listening socket, bound before the server says it serves.

Binding first turns a port already in use into one clear error before any
"serving on" line, instead of a log entry after it.
"""

from __future__ import annotations

import socket


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (an IPv6 address for a host with
    a colon), with SO_REUSEADDR as uvicorn sets it; the caller serves on it.

    Raises OSError (e.g. EADDRINUSE, EADDRNOTAVAIL) when it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)
