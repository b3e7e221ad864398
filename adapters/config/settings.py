"""Settings: environment variables prefixed ALLOCATION_LEDGER_, or a TOML file.

The file is named by ALLOCATION_LEDGER_CONFIG (or --config on the command
line); environment variables override what it says.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from allocation_ledger.adapters.config.catalog import Catalog
from allocation_ledger.adapters.config.file import ConfigFileSource
from allocation_ledger.adapters.http.hosts import allowed_host, allowed_origin
from allocation_ledger.adapters.http.tokens import TokenEntry, load_tokens_file

ENV_PREFIX = "ALLOCATION_LEDGER_"
DEFAULT_DATABASE = "allocation-ledger.db"
DEFAULT_HTTP_PORT = 8765
DEFAULT_SESSIONS_PER_TOKEN = 32
MIN_INTERVAL_SECONDS = 0.01
"""The shortest sweep or idle-check interval: 1e-9 s was accepted and kept a
background job running back to back, holding the store from commands."""
"""A client holds one MCP session while connected; 32 leaves room for a few
agents sharing a token and for reconnects, while what one token can hold
stays small (a session costs the server about 45 KB; docs/deployment.md)."""
DEFAULT_SESSION_IDLE_SECONDS = 600.0
"""A session with a request or event stream open never idles; this only says
how soon a client gone without ending its session gives its place back."""
STORE_TIMEOUT_ENV = "LEDGER_STORE_TIMEOUT"
"""The key under which the PostgreSQL event store reads the store timeout."""


class Settings(BaseSettings):
    """Everything an operator configures: store, HTTP, tokens, sweeps, logging."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", validate_default=True
    )

    store: Literal["sqlite", "memory", "postgres"] = Field(
        "sqlite", description="Where events and read models live."
    )
    database: Path = Field(
        Path(DEFAULT_DATABASE),
        description="SQLite file; relative paths are taken from the working directory.",
    )
    postgres_dsn: str | None = Field(
        None, description="PostgreSQL connection string (overrides host/port/...)."
    )
    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(5432, ge=1, le=65535)
    postgres_user: str = "postgres"
    postgres_password: SecretStr = SecretStr("")
    postgres_dbname: str = "postgres"
    postgres_schema: str | None = None
    postgres_pool_size: int = Field(5, ge=1, le=100)
    postgres_connect_timeout: int = Field(
        5, ge=1, le=300, description="Seconds one attempt to connect may take."
    )
    store_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=300,
        description=(
            "The longest a command waits for the ledger's database (for this "
            "server's other commands ahead of it, then for a PostgreSQL "
            "connection, in all); then it fails, naming the cause."
        ),
    )
    sweep_interval_seconds: float = Field(
        300.0,
        ge=MIN_INTERVAL_SECONDS,
        allow_inf_nan=False,
        description=(
            "How often expired leases are swept; at least 0.01 s (a shorter "
            "interval would keep the sweeper holding the store)."
        ),
    )
    idle_check_interval_seconds: float = Field(
        60.0,
        ge=MIN_INTERVAL_SECONDS,
        allow_inf_nan=False,
        description="How often idle MCP servers are looked for; at least 0.01 s.",
    )
    lease_warning_seconds: float = Field(
        60.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "How long before an allocation's lease runs out its subscribers "
            "are told (a resources/updated notification with event "
            "lease_ending), so that an agent can renew in time."
        ),
    )
    provisioning_timeout_seconds: float = Field(
        60.0,
        ge=1,
        allow_inf_nan=False,
        description=(
            "An allocation still pending or releasing this long after its last "
            "event was interrupted (a crash between provisioning steps): the "
            "sweeper finishes it. At least 1 s: shorter, the sweeper would "
            "take a server still starting for an interrupted one."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Level of the server's log, written to stderr."
    )
    log_format: Literal["plain", "json"] = Field(
        "plain",
        description=(
            "The server's log lines: plain (time, level, logger, message) or "
            "json (one object per line, for log shippers)."
        ),
    )
    config: Path | None = Field(
        None,
        description=(
            "The TOML file the settings were read from (ALLOCATION_LEDGER_CONFIG "
            "or --config); environment variables override what it says."
        ),
    )
    http_host: str = Field(
        "127.0.0.1", description="Address `serve --transport http` listens on."
    )
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=1, le=65535)
    http_path: str = Field(
        "/mcp", pattern=r"^/[A-Za-z0-9._~/-]*$", description="Path of the MCP endpoint."
    )
    http_stateless: bool = Field(
        False,
        description=(
            "Keep no MCP session state in the process, so that a load balancer "
            "may send each request to any server (several servers, one ledger)."
        ),
    )
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Host headers the MCP endpoint accepts besides the loopback names "
            "and the bind address (a reverse proxy's public name): name, "
            "name:port or name:*; comma-separated or a JSON list."
        ),
    )
    http_allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Origin headers (browser pages) accepted besides the loopback names "
            "and the bind address: http(s)://name[:port|:*]; comma-separated "
            "or a JSON list."
        ),
    )
    http_sessions_per_token: int = Field(
        DEFAULT_SESSIONS_PER_TOKEN,
        ge=1,
        description=(
            "MCP sessions one token (one client address without authentication) "
            "may hold open over HTTP; a request for one more gets 429."
        ),
    )
    http_session_idle_seconds: float = Field(
        DEFAULT_SESSION_IDLE_SECONDS,
        gt=0,
        allow_inf_nan=False,
        description=(
            "An HTTP MCP session with no request in flight for this long is "
            "closed; its client must initialize a new one."
        ),
    )
    tokens: list[TokenEntry] = Field(
        default_factory=list,
        description=(
            "Bearer tokens for HTTP, as a JSON list of "
            '{"subject", "scopes", "token" | "token_sha256"}.'
        ),
    )
    tokens_file: Path | None = Field(
        None, description="A JSON file with more tokens, in the same form as `tokens`."
    )
    data_directory: Path | None = Field(
        None,
        description=(
            "Where the process provisioner keeps MCP server logs (logs/) and "
            "state files (run/). Default: next to the SQLite file, "
            "<database>.d/; ./allocation-ledger.d/ with PostgreSQL; a temporary "
            "directory with the in-memory store."
        ),
    )
    stop_mcp_servers_on_exit: bool = Field(
        False,
        description=(
            "Stop every MCP server process when the ledger stops. By default "
            "they keep running and the next start on the same data directory "
            "adopts them (always stopped with the in-memory store)."
        ),
    )
    catalog: Catalog = Field(
        default_factory=Catalog,
        description="The config file's provisioner, [mcp_servers.*] and [pools.*].",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("http_allowed_hosts", "http_allowed_origins", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part for part in text.split(",") if part.strip()]
        return value

    @field_validator("http_allowed_hosts")
    @classmethod
    def _check_hosts(cls, value: list[str]) -> list[str]:
        return [allowed_host(entry) for entry in value]

    @field_validator("http_allowed_origins")
    @classmethod
    def _check_origins(cls, value: list[str]) -> list[str]:
        return [allowed_origin(entry) for entry in value]

    @field_validator("postgres_dsn")
    @classmethod
    def _check_postgres_dsn(cls, value: str | None) -> str | None:
        """A connection string psycopg can read, whose port is a number; the
        message never repeats it (it may hold a password)."""
        if value is None:
            return None
        from psycopg import Error as PsycopgError
        from psycopg.conninfo import conninfo_to_dict

        shape = (
            "write postgresql://USER:PASSWORD@HOST:PORT/DBNAME or "
            "host=HOST port=PORT dbname=DBNAME"
        )
        try:
            port = conninfo_to_dict(value).get("port")
        except PsycopgError:
            msg = f"is not a PostgreSQL connection string ({shape})"
            raise ValueError(msg) from None
        if port is not None and not str(port).isdigit():
            msg = f"its port is not a number ({shape})"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _postgres_dsn_parts(self) -> Settings:
        if self.store == "postgres" and self.postgres_dsn:
            from psycopg.conninfo import conninfo_to_dict

            parts = conninfo_to_dict(self.postgres_dsn)
            self.postgres_host = str(parts.get("host", self.postgres_host))
            self.postgres_port = int(str(parts.get("port", self.postgres_port)))
            self.postgres_user = str(parts.get("user", self.postgres_user))
            if "password" in parts:
                self.postgres_password = SecretStr(str(parts["password"]))
            self.postgres_dbname = str(parts.get("dbname", self.postgres_dbname))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = None
        if isinstance(init_settings, InitSettingsSource):
            config = init_settings.init_kwargs.get("config")
        config = config or os.environ.get(ENV_PREFIX + "CONFIG")
        if config:
            sources.append(ConfigFileSource(settings_cls, Path(config)))
        return tuple(sources)

    def token_entries(self) -> list[TokenEntry]:
        """Every configured token: `tokens`, then those in `tokens_file`."""
        entries = list(self.tokens)
        if self.tokens_file is not None:
            entries.extend(load_tokens_file(self.tokens_file))
        return entries

    def eventsourcing_env(self) -> dict[str, str]:
        """The persistence settings the event store reads."""
        if self.store == "memory":
            return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
        if self.store == "sqlite":
            return {
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(self.database),
                "SQLITE_LOCK_TIMEOUT": "30",
            }
        env = {
            # eventsourcing's factory, with bounded waits and writes tried once
            # (adapters/storage/postgres_store.py).
            "PERSISTENCE_MODULE": (
                "allocation_ledger.adapters.storage.postgres_store:"
                "LedgerPostgresFactory"
            ),
            STORE_TIMEOUT_ENV: str(self.store_timeout_seconds),
            # Several processes write: bring a cached pool up to date before
            # deciding, rather than losing the race and retrying.
            "AGGREGATE_CACHE_FASTFORWARD": "y",
            # Check a pooled connection before use, so a database restart
            # costs the commands in flight, not the ones after.
            "POSTGRES_PRE_PING": "y",
            "POSTGRES_DBNAME": self.postgres_dbname,
            "POSTGRES_HOST": self.postgres_host,
            "POSTGRES_PORT": str(self.postgres_port),
            "POSTGRES_USER": self.postgres_user,
            "POSTGRES_PASSWORD": self.postgres_password.get_secret_value(),
            "POSTGRES_POOL_SIZE": str(self.postgres_pool_size),
            "POSTGRES_CONNECT_TIMEOUT": str(self.postgres_connect_timeout),
        }
        if self.postgres_schema:
            env["POSTGRES_SCHEMA"] = self.postgres_schema
        return env

    def postgres_conninfo(self) -> dict[str, Any]:
        return {
            "host": self.postgres_host,
            "port": self.postgres_port,
            "user": self.postgres_user,
            "password": self.postgres_password.get_secret_value() or None,
            "dbname": self.postgres_dbname,
            "connect_timeout": self.postgres_connect_timeout,
            **connection_limits(self.store_timeout_seconds),
        }


def connection_limits(timeout: float) -> dict[str, Any]:
    """libpq options that make a silent PostgreSQL peer fail a connection in
    about `timeout` seconds: TCP keepalives, and a limit on how long sent data
    may stay unacknowledged."""
    return {
        "keepalives": 1,
        "keepalives_idle": max(1, int(timeout)),
        "keepalives_interval": 1,
        "keepalives_count": 3,
        "tcp_user_timeout": max(1000, int(timeout * 1000)),
    }
