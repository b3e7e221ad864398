"""`allocation-ledger serve`: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import sys

import anyio

from allocation_ledger.adapters.cli.console import PROG, fail
from allocation_ledger.adapters.config.apply import DEFAULT_FILE_LABEL, apply_catalog
from allocation_ledger.adapters.config.catalog import CatalogError
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.storage.service import open_service
from allocation_ledger.domain.errors import LedgerError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the MCP server until stdin closes (stdio) or it is interrupted (HTTP)."""
    from allocation_ledger.adapters.http.auth import StaticTokenVerifier

    verifier: StaticTokenVerifier | None = None
    host = args.host or settings.http_host
    port = args.port if args.port is not None else settings.http_port
    path = args.path or settings.http_path
    if args.transport == "http":
        if not path.startswith("/"):
            return fail(f"--path must start with '/', got {path!r}", 2)
        if not 0 < port < 65536:
            return fail(f"--port must be 1-65535, got {port}", 2)
        if args.no_auth:
            if not _is_loopback(host):
                print(
                    f"{PROG}: WARNING: serving without authentication on {host}; "
                    "anyone who can reach it can allocate and release",
                    file=sys.stderr,
                )
        else:
            try:
                verifier = StaticTokenVerifier(settings.token_entries())
            except ValueError as error:
                return fail(str(error), 2)
            if not len(verifier):
                return fail(
                    "no bearer tokens are configured: set "
                    f"{ENV_PREFIX}TOKENS or {ENV_PREFIX}TOKENS_FILE, or pass "
                    "--no-auth to serve without authentication",
                    2,
                )
    try:
        service = open_service(settings)
    except Exception as error:  # noqa: BLE001 - shown to the operator
        return fail(f"cannot open the ledger: {error}", 2)
    try:
        config = os.environ.get(ENV_PREFIX + "CONFIG") or DEFAULT_FILE_LABEL
        for change in apply_catalog(service.ledger, settings.catalog, path=config):
            print(f"{PROG}: config: {change}", file=sys.stderr)
    except CatalogError as error:
        service.close()
        return fail(str(error), 2)
    except LedgerError as error:
        service.close()
        return fail(f"cannot apply the catalog of the config file: {error}", 2)
    try:
        if args.transport == "stdio":
            from allocation_ledger.adapters.mcp.server import stdio_server

            anyio.run(stdio_server(service).run_stdio_async)
        else:
            from allocation_ledger.adapters.mcp.server import http_app, serve_http

            app = http_app(
                service,
                host=host,
                path=path,
                verifier=verifier,
                stateless=args.stateless or settings.http_stateless,
            )
            auth = (
                "without authentication" if verifier is None else "with bearer tokens"
            )
            print(
                f"{PROG}: serving MCP on http://{host}:{port}{path} {auth}",
                file=sys.stderr,
            )
            anyio.run(
                functools.partial(
                    serve_http, app, host=host, port=port, log_level=settings.log_level
                )
            )
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    return 0
