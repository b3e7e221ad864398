"""Bearer-token configuration: what settings hold about each token.

Kept apart from `adapters.http.auth` so that reading settings never imports the
MCP SDK.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from allocation_ledger.domain.actors import LOCAL_ACTOR
from allocation_ledger.domain.values import TENANT_PATTERN

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "write", "admin")
MIN_TOKEN_LENGTH = 16
SENDABLE_TOKEN = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")
"""What a bearer token may be so that a client can send it: a header value
is ASCII, and HTTP drops the spaces at its ends (matched in full)."""
ANONYMOUS_ACTOR = "anonymous"

Subject = Annotated[
    str,
    Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._@:/-]*$",
        description="Who the token speaks for; recorded as the actor of events.",
    ),
]


Tenant = Annotated[
    str,
    Field(
        pattern=TENANT_PATTERN.pattern,
        description=(
            "Whose allocations the token sees and acts on; tokens with the same "
            "tenant share them. Default: the subject."
        ),
    ),
]


class TokenEntry(BaseModel):
    """One bearer token: its secret (or its SHA-256), subject, tenant and
    scopes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    subject: Subject
    scopes: list[Scope] = Field(min_length=1)
    tenant: Tenant | None = None
    token: SecretStr | None = Field(
        None, description=f"The token itself, at least {MIN_TOKEN_LENGTH} characters."
    )
    token_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Hex SHA-256 of the token, instead of the token itself.",
    )

    @model_validator(mode="after")
    def _one_secret(self) -> TokenEntry:
        if (self.token is None) == (self.token_sha256 is None):
            msg = "give exactly one of token and token_sha256"
            raise ValueError(msg)
        if self.token is not None and len(self.token.get_secret_value()) < (
            MIN_TOKEN_LENGTH
        ):
            msg = f"token must be at least {MIN_TOKEN_LENGTH} characters"
            raise ValueError(msg)
        if self.token is not None and not SENDABLE_TOKEN.fullmatch(
            self.token.get_secret_value()
        ):
            msg = (
                "token must be printable ASCII with no space at either end: "
                "an HTTP client can send nothing else in the Authorization "
                "header, so no client could present this one"
            )
            raise ValueError(msg)
        if self.subject in (LOCAL_ACTOR, ANONYMOUS_ACTOR) or self.subject.startswith(
            "system:"
        ):
            msg = f"subject {self.subject!r} is reserved for the ledger itself"
            raise ValueError(msg)
        return self

    @property
    def tenant_name(self) -> str:
        """The token's tenant: as configured, else its subject."""
        return self.subject if self.tenant is None else self.tenant

    def digest(self) -> bytes:
        if self.token is not None:
            return token_digest(self.token.get_secret_value())
        assert self.token_sha256 is not None
        return bytes.fromhex(self.token_sha256)


TOKEN_LIST = TypeAdapter(list[TokenEntry])


def load_tokens_file(path: Path) -> list[TokenEntry]:
    """Read a JSON list of token entries; errors name the file."""
    try:
        return TOKEN_LIST.validate_json(path.read_bytes())
    except OSError as error:
        msg = f"cannot read tokens file {path}: {error.strerror or error}"
        raise ValueError(msg) from None
    except ValidationError as error:
        msg = f"tokens file {path} is not a JSON list of tokens: " + "; ".join(
            _problems(error)
        )
        raise ValueError(msg) from None


SECRET_KEYS = ("token", "token_sha256")
"""Keys whose values are never repeated in a message: a log must not
learn a token, nor its digest."""


def _problems(error: ValidationError) -> list[str]:
    """Each problem of a tokens file as `[i].key: what, got value`, on one
    line; the values of secrets are left out, and so is the file's text
    when it is not JSON."""
    problems = []
    for item in error.errors(include_url=False):
        location = [str(part) for part in item["loc"]]
        where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in location)
        message = item["msg"].removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
        got = item.get("input")
        secret = bool(location) and location[-1] in SECRET_KEYS
        shown = "" if secret or isinstance(got, dict | bytes) else f", got {got!r}"
        problems.append(f"{where.lstrip('.') or 'the file'}: {message}{shown}")
    return problems


def token_digest(token: str) -> bytes:
    """The SHA-256 of a token, as tokens are compared."""
    return hashlib.sha256(token.encode()).digest()
