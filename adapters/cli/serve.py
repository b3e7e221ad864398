"""`allocation-ledger serve`: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import socket

import anyio

from allocation_ledger.adapters.cli.console import fail
from allocation_ledger.adapters.cli.server_log import configure_server_log
from allocation_ledger.adapters.config.apply import apply_catalog
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.http.listener import listen
from allocation_ledger.adapters.storage.ledger_file import ledger_location
from allocation_ledger.adapters.storage.service import DatabaseError, open_service
from allocation_ledger.domain.errors import LedgerError

logger = logging.getLogger("allocation_ledger.serve")


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

    configure_server_log(settings.log_level, args.log_format or settings.log_format)
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
                logger.warning(
                    "serving without authentication on %s; anyone who can "
                    "reach it can allocate and release",
                    host,
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
    listener: socket.socket | None = None
    if args.transport == "http":
        try:
            listener = listen(host, port)
        except OSError as error:
            return fail(
                f"cannot listen on {host}:{port}: "
                f"{os.strerror(error.errno) if error.errno else error} "
                f"(is another server using it? choose another with --port or "
                f"{ENV_PREFIX}HTTP_PORT)",
                1,
            )
    try:
        service = open_service(settings)
    except Exception as error:  # noqa: BLE001 - shown to the operator
        if listener is not None:
            listener.close()
        if isinstance(error, DatabaseError):
            return fail(str(error), 1)
        return fail(f"cannot open the ledger {ledger_location(settings)}: {error}", 1)
    logger.info("ledger: %s %s", settings.store, ledger_location(settings))
    try:
        for change in apply_catalog(service.ledger, settings.catalog):
            logger.info("config: %s", change)
    except LedgerError as error:
        service.close()
        if listener is not None:
            listener.close()
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
            logger.info("serving MCP on http://%s:%d%s %s", host, port, path, auth)
            anyio.run(
                functools.partial(
                    serve_http,
                    app,
                    host=host,
                    port=port,
                    log_level=settings.log_level,
                    sock=listener,
                )
            )
    except KeyboardInterrupt:
        pass
    finally:
        service.close()
    return 0
