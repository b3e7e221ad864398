"""Bearer tokens for the HTTP transport, and who is calling a tool.

Tokens come from settings (`ALLOCATION_LEDGER_TOKENS` as JSON, or a JSON file
named by `ALLOCATION_LEDGER_TOKENS_FILE`). Each has a subject, recorded as the
`actor` of the events its calls cause, a tenant (default: the subject), whose
allocations it sees and acts on, and scopes:

- `read`: every query tool and resource;
- `write`: also request, renew and release allocations, and clean up;
- `admin`: also set a pool's capacity, and see and act on every tenant's
  allocations.

Each scope includes the ones before it. A token is given either in clear
(`token`) or as the hex SHA-256 of the token (`token_sha256`), so a tokens file
need not hold the secrets themselves.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.mcpserver.exceptions import ToolError

from allocation_ledger.adapters.http.tokens import (
    ANONYMOUS_ACTOR,
    SCOPES,
    Scope,
    TokenEntry,
    token_digest,
)
from allocation_ledger.domain.actors import LOCAL_ACTOR
from allocation_ledger.domain.tenancy import EVERY_TENANT, Visibility

__all__ = [
    "ANONYMOUS_ACTOR",
    "LOCAL_ACTOR",
    "Access",
    "Caller",
    "Scope",
    "StaticTokenVerifier",
]

TENANT_CLAIM = "tenant"
"""The claim of a verified token that names its tenant (absent: the subject)."""


def expand_scopes(scopes: Iterable[str]) -> list[str]:
    """Each scope includes the lower ones: admin > write > read."""
    granted = set(scopes)
    top = max((rank for rank, s in enumerate(SCOPES) if s in granted), default=-1)
    return list(SCOPES[: top + 1])


class StaticTokenVerifier:
    """Checks bearer tokens against the configured list (an mcp TokenVerifier)."""

    def __init__(self, entries: Sequence[TokenEntry]) -> None:
        self._by_digest: dict[bytes, TokenEntry] = {}
        for entry in entries:
            digest = entry.digest()
            if digest in self._by_digest:
                msg = (
                    f"the same token is configured twice (subjects "
                    f"{self._by_digest[digest].subject!r} and {entry.subject!r})"
                )
                raise ValueError(msg)
            self._by_digest[digest] = entry

    def __len__(self) -> int:
        return len(self._by_digest)

    async def verify_token(self, token: str) -> AccessToken | None:
        digest = token_digest(token)
        for known, entry in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return AccessToken(
                    token=token,
                    client_id=entry.subject,
                    subject=entry.subject,
                    scopes=expand_scopes(entry.scopes),
                    claims={TENANT_CLAIM: entry.tenant_name},
                )
        return None


@dataclass(frozen=True)
class Caller:
    """Who calls a tool: recorded as `actor` on the events the call causes,
    acting for `tenant` (whose allocations it makes; None: no tenant), and
    seeing and acting on the allocations `visibility` includes."""

    actor: str
    tenant: str | None
    visibility: Visibility

    @property
    def sees_every_tenant(self) -> bool:
        return self.visibility.tenant is None


@dataclass(frozen=True)
class Access:
    """Who may call what on one server, and who is recorded as doing it.

    With `require_token`, every call must come with a verified bearer token
    (the HTTP transport enforces that before any tool runs) whose scopes
    allow the tool. Without it (stdio, or HTTP started with --no-auth),
    calls are allowed and recorded as `anonymous_actor`.
    """

    require_token: bool
    anonymous_actor: str = LOCAL_ACTOR

    def actor(self, scope: Scope, action: str) -> str:
        """The actor for a call that needs `scope`; ToolError if not allowed."""
        return self.caller(scope, action).actor

    def caller(self, scope: Scope, action: str) -> Caller:
        """Who makes a call that needs `scope`; ToolError if not allowed.

        With a token: its subject, acting for its tenant, seeing that
        tenant's allocations only unless it has the admin scope. Without
        (stdio, --no-auth): `anonymous_actor`, with no tenant, seeing every
        tenant's allocations, so all such callers share one view.
        """
        token = get_access_token()
        if token is None:
            if self.require_token:
                msg = f"{action} needs a bearer token with the {scope!r} scope"
                raise ToolError(msg)
            return Caller(self.anonymous_actor, None, EVERY_TENANT)
        subject = token.subject or token.client_id
        if scope not in token.scopes:
            msg = (
                f"{action} needs the {scope!r} scope; the token of {subject!r} "
                f"has {', '.join(token.scopes) or 'no scopes'}"
            )
            raise ToolError(msg)
        claimed = (token.claims or {}).get(TENANT_CLAIM)
        tenant = claimed if isinstance(claimed, str) else subject
        admin = "admin" in token.scopes
        return Caller(subject, tenant, EVERY_TENANT if admin else Visibility(tenant))
