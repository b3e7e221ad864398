"""A TCP proxy on a loopback port that a test cuts, to make a store outage.

Put in front of PostgreSQL, it forwards bytes both ways until the test cuts
it: then every connection through it is closed at once and new ones are
refused (its port stops listening) until the test restores it. A trip wire
cuts it at a chosen moment of the conversation, deterministically:

- `cut_when_sent(pattern)`: just before the client sends bytes holding
  `pattern` (say, the name of a read-model table: the moment a server starts
  reading its read models, after a command committed);
- `cut_after_commit(pattern)`: once a connection that sent `pattern` (at
  any time since it opened: say, a setting only the event store's
  connections make) has sent COMMIT *and the server answered it*, dropping
  that answer: the transaction is committed, but the client never learns
  it.

Threads, not asyncio, so it runs beside whatever event loop the test uses.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

_TAIL = 256
"""Bytes kept from the previous chunk, so a pattern split by recv() is seen."""
_OPENING = 4096
"""Bytes kept from the start of each connection (its settings)."""
_COMMIT = b"\x00COMMIT\x00"
"""A COMMIT statement, as the client sends it."""
_COMMITTED = b"C\x00\x00\x00\x0bCOMMIT\x00"
"""The server's CommandComplete for a COMMIT: the transaction is committed."""


@dataclass
class _Link:
    """One client connection and its connection to the target."""

    client: socket.socket
    server: socket.socket
    committing: bool = False
    opening: bytes = b""
    tail: bytes = b""

    def close(self) -> None:
        for end in (self.client, self.server):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                end.close()


@dataclass
class _TripWire:
    pattern: bytes
    after_commit: bool


@dataclass
class CuttableProxy:
    """Forwards 127.0.0.1:`port` to `target` until cut (see the module)."""

    target: tuple[str, int]
    port: int = 0
    tripped: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None
    _links: list[_Link] = field(default_factory=list)
    _wire: _TripWire | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- life -----------------------------------------------------------------

    def start(self) -> None:
        """Listen (on a free port the first time, on the same port after a cut)."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close every connection through the proxy and refuse new ones."""
        self.tripped.set()  # before any client can see the cut
        with self._lock:
            listener, self._listener = self._listener, None
            links, self._links = self._links, []
            self._wire = None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for link in links:
            link.close()

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self.tripped.clear()
        self.start()

    def close(self) -> None:
        self.cut()

    # -- trip wires -------------------------------------------------------------

    def cut_when_sent(self, pattern: bytes) -> None:
        """Cut just before a client sends bytes that hold `pattern`."""
        with self._lock:
            self._wire = _TripWire(pattern, after_commit=False)

    def cut_after_commit(self, pattern: bytes) -> None:
        """Cut once a connection that sent `pattern` has committed, dropping
        the server's answer to its COMMIT."""
        with self._lock:
            self._wire = _TripWire(pattern, after_commit=True)

    def disarm(self) -> None:
        """Take the trip wire away (a cut already made stays)."""
        with self._lock:
            self._wire = None

    # -- forwarding -------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            link = _Link(client, server)
            with self._lock:
                if self._listener is not listener:
                    link.close()
                    return
                self._links.append(link)
            threading.Thread(target=self._upstream, args=(link,), daemon=True).start()
            threading.Thread(target=self._downstream, args=(link,), daemon=True).start()

    def _upstream(self, link: _Link) -> None:
        """Client to server, watching for the trip wire."""
        for chunk in _chunks(link.client):
            seen = link.tail + chunk
            link.tail = seen[-_TAIL:]
            if len(link.opening) < _OPENING:
                link.opening += chunk[: _OPENING - len(link.opening)]
            with self._lock:
                wire = self._wire
            if wire is not None and not wire.after_commit and wire.pattern in seen:
                self.cut()
                return
            if (
                wire is not None
                and wire.after_commit
                and _COMMIT in seen
                and (wire.pattern in link.opening or wire.pattern in seen)
            ):
                link.committing = True
            try:
                link.server.sendall(chunk)
            except OSError:
                break
        link.close()

    def _downstream(self, link: _Link) -> None:
        """Server to client; the answer to a watched COMMIT is dropped."""
        for chunk in _chunks(link.server):
            if link.committing and _COMMITTED in chunk:
                self.cut()
                return
            try:
                link.client.sendall(chunk)
            except OSError:
                break
        link.close()


def _chunks(source: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            chunk = source.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        yield chunk
