"""How many MCP sessions one token may hold open over streamable HTTP.

The MCP SDK keeps each session (its transport, streams and server task) in the
process until the client ends it or it has been idle for the idle timeout, and
refuses every new session, whoever asks, once 10,000 are open. Left at that,
one token could open sessions until the server refuses everyone else. So each
token (each client address when the server runs without authentication) may
hold at most `limit` sessions; a request that would open one more is answered
`429` with a JSON-RPC error naming the limit, to that token only, and other
tokens carry on. A session stops counting when the client ends it (`DELETE`)
or when it has had no request in flight for `idle_seconds`, as the SDK then
closes it (the server is given the same idle timeout).

Only clients of the protocol versions that open sessions (an `initialize`
request, answered with an `Mcp-Session-Id`) hold any; requests of later
versions carry no session and pass untouched.

`SessionLimit` is an ASGI middleware in front of the whole app; it watches
the MCP endpoint's requests and answers (the `Mcp-Session-Id` header), so it
needs nothing from the SDK's internals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("allocation_ledger.http")

SESSION_HEADER = "mcp-session-id"
PROTOCOL_HEADER = "mcp-protocol-version"
REFUSALS_LOGGED_EVERY = 60.0
"""Seconds between two log lines about refusals to one holder."""
SERVER_ERROR = -32000
"""JSON-RPC code of the refusal: a server error, outside the reserved codes."""


class Subjects(Protocol):
    """Who a bearer token speaks for (an mcp TokenVerifier has this shape)."""

    async def verify_token(self, token: str) -> object | None: ...


@dataclass
class _Session:
    """One session this process serves, as seen from outside the SDK."""

    holder: str
    in_flight: int = 0
    idle_since: float = 0.0


@dataclass
class SessionLimit:
    """ASGI middleware: at most `limit` open sessions per token on `path`.

    `app` is the streamable HTTP app; `limit` is a count of sessions,
    `idle_seconds` the SDK's idle timeout (seconds). `subjects`, when the
    server checks tokens, names the token's subject in the log line of a
    refusal. Raises ValueError for a limit below 1 or a non-positive timeout.
    """

    app: ASGIApp
    path: str
    limit: int
    idle_seconds: float
    subjects: Subjects | None = None
    _sessions: dict[str, _Session] = field(default_factory=dict)
    _opening: dict[str, int] = field(default_factory=dict)
    _refusals: dict[str, tuple[float, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.limit < 1:
            msg = f"the session limit must be at least 1, got {self.limit}"
            raise ValueError(msg)
        if not self.idle_seconds > 0:
            msg = f"the idle timeout must be positive, got {self.idle_seconds}"
            raise ValueError(msg)

    def open_sessions(self, holder: str) -> int:
        """Sessions `holder` has open or is opening now (idle ones dropped)."""
        self._forget_idle()
        held = sum(1 for s in self._sessions.values() if s.holder == holder)
        return held + self._opening.get(holder, 0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        holder = _holder(headers, scope)
        session_id = headers.get(SESSION_HEADER)
        version = headers.get(PROTOCOL_HEADER)
        if session_id is not None:
            await self._use(holder, session_id, scope, receive, send)
        elif version is None or version in HANDSHAKE_PROTOCOL_VERSIONS:
            await self._open(holder, headers, scope, receive, send)
        else:  # a sessionless request of a later protocol version
            await self.app(scope, receive, send)

    async def _open(
        self, holder: str, headers: Headers, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A request without a session id: it may open one, if under the limit.

        At the limit only what would open a session (a POST whose body is
        an `initialize` request) is refused; anything else goes on to the
        SDK, which answers it as it answers every request without a session.
        """
        if self.open_sessions(holder) >= self.limit:
            receive, opens = await _peek_initialize(scope, receive)
            if opens:
                await self._refuse(holder, headers, scope, receive, send)
                return
        self._opening[holder] = self._opening.get(holder, 0) + 1
        opened: _Session | None = None

        async def watch(message: Message) -> None:
            nonlocal opened
            if message["type"] == "http.response.start":
                session_id = Headers(raw=message.get("headers", [])).get(SESSION_HEADER)
                if session_id is not None and message["status"] < 400:
                    opened = _Session(holder, in_flight=1)
                    self._sessions[session_id] = opened
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self._opening[holder] -= 1
            if not self._opening[holder]:
                del self._opening[holder]
            if opened is not None:
                self._settle(opened)

    async def _use(
        self, holder: str, session_id: str, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """A request in a session: it keeps the session busy while in flight."""
        known = self._sessions.get(session_id)
        session = known if known is not None and known.holder == holder else None
        if session is not None:
            session.in_flight += 1
        status = 0

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if session is not None:
                self._settle(session)
            if status == 404 or (scope["method"] == "DELETE" and 0 < status < 400):
                # Ended by the client, or already gone (idle, crashed).
                if session is not None:
                    self._sessions.pop(session_id, None)
            elif session is None and 0 < status < 400 and known is None:
                # The SDK served it, so it is the holder's and alive: a
                # session this side had counted out a moment too early.
                self._sessions[session_id] = _Session(
                    holder, idle_since=anyio.current_time()
                )

    def _settle(self, session: _Session) -> None:
        session.in_flight -= 1
        session.idle_since = anyio.current_time()

    def _forget_idle(self) -> None:
        due = anyio.current_time() - self.idle_seconds
        for session_id in [
            i
            for i, s in self._sessions.items()
            if s.in_flight == 0 and s.idle_since <= due
        ]:
            del self._sessions[session_id]

    async def _refuse(
        self, holder: str, headers: Headers, scope: Scope, receive: Receive, send: Send
    ) -> None:
        who = await self._who(headers, scope)
        self._log_refusal(holder, who)
        unit = "token" if _bearer(headers) is not None else "client address"
        message = (
            f"too many open MCP sessions: {who} holds {self.limit}, the most one "
            f"{unit} may hold; end one (HTTP DELETE with its Mcp-Session-Id) or "
            f"let one stay idle for {self.idle_seconds:g} s, then retry"
        )
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": SERVER_ERROR, "message": message},
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", str(max(1, round(self.idle_seconds))).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _log_refusal(self, holder: str, who: str) -> None:
        """One log line per holder and `REFUSALS_LOGGED_EVERY` seconds, with
        the number of refusals since the last one: a client that keeps
        asking cannot flood the log."""
        now = anyio.current_time()
        logged_at, unlogged = self._refusals.get(holder, (-math.inf, 0))
        if now - logged_at < REFUSALS_LOGGED_EVERY:
            self._refusals[holder] = (logged_at, unlogged + 1)
            return
        self._refusals[holder] = (now, 0)
        logger.warning(
            "refused a new MCP session to %s: it holds %d open sessions, the "
            "limit (%d more refused since the last such line)",
            who,
            self.limit,
            unlogged,
        )

    async def _who(self, headers: Headers, scope: Scope) -> str:
        """The holder in words: the token's subject, or the client address."""
        token = _bearer(headers)
        if token is not None and self.subjects is not None:
            verified = await self.subjects.verify_token(token)
            subject = getattr(verified, "subject", None)
            if isinstance(subject, str):
                return f"the token of {subject!r}"
        if token is not None:
            return "this token"
        return f"client {_address(scope)}"


def _bearer(headers: Headers) -> str | None:
    """The bearer token of a request, as the SDK reads it."""
    value = headers.get("authorization")
    if value is None or not value.lower().startswith("bearer "):
        return None
    return value[7:]


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _holder(headers: Headers, scope: Scope) -> str:
    """Whom a request's sessions count against: its bearer token (by its
    SHA-256), or, without one, its client address."""
    token = _bearer(headers)
    if token is not None:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()
    return "address:" + _address(scope)


PEEK_BYTES = 64 * 1024
"""How much of a request body is read to see whether it is an `initialize`
(one is a few hundred bytes); a longer body counts as one."""


async def _peek_initialize(scope: Scope, receive: Receive) -> tuple[Receive, bool]:
    """Whether a request would open a session (a POST of an `initialize`
    request, alone or in a batch), and a `receive` that gives the app the
    body read to find out, then the rest."""
    if scope.get("method") != "POST":
        return receive, False
    read: list[Message] = []
    size = 0
    while size <= PEEK_BYTES:
        message = await receive()
        read.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(m.get("body", b"") for m in read if m["type"] == "http.request")
    complete = bool(read) and (
        read[-1]["type"] != "http.request" or not read[-1].get("more_body", False)
    )
    # A body too long to read here is counted as one that would open a
    # session: padding an initialize must not get past the limit.
    opens = not complete or _is_initialize(body)

    async def replay() -> Message:
        if read:
            return read.pop(0)
        return await receive()

    return replay, opens


def _is_initialize(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    messages = parsed if isinstance(parsed, list) else [parsed]
    return any(
        isinstance(m, dict) and m.get("method") == "initialize" for m in messages
    )
