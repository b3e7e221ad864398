"""`allocation-ledger serve`: the MCP server over stdio or streamable HTTP."""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import logging
import os
import socket

import anyio

from allocation_ledger.adapters.cli.console import fail
from allocation_ledger.adapters.cli.server_log import configure_server_log
from allocation_ledger.adapters.config.apply import DEFAULT_FILE_LABEL, apply_catalog
from allocation_ledger.adapters.config.catalog import CatalogError
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.http.hosts import (
    allowed_host,
    allowed_origin,
    host_name,
)
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


def _say_allowed_hosts(host: str, hosts: list[str]) -> None:
    """Tell the operator which Host headers the MCP endpoint accepts."""
    names = ", ".join(
        dict.fromkeys(["127.0.0.1", "localhost", "[::1]", host_name(host), *hosts])
    )
    hint = ""
    if not hosts and not _is_loopback(host):
        hint = (
            f"; to reach it by another name (a reverse proxy's), set "
            f"{ENV_PREFIX}HTTP_ALLOWED_HOSTS or --allowed-host"
        )
    logger.info("accepting requests addressed to %s%s", names, hint)


def add_metrics_arguments(serve: argparse.ArgumentParser) -> None:
    """`serve --metrics-port N [--metrics-host H]`."""
    serve.add_argument(
        "--metrics-port",
        type=int,
        help=(
            "also serve Prometheus metrics at http://HOST:PORT/metrics, with no "
            "authentication (for stdio servers; over HTTP /metrics is served too)"
        ),
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of --metrics-port (default: 127.0.0.1)",
    )


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Run the MCP server until stdin closes (stdio) or it is interrupted (HTTP)."""
    from allocation_ledger.adapters.http.auth import StaticTokenVerifier
    from allocation_ledger.adapters.mcp.tools.specs import TOOLS
    from allocation_ledger.adapters.metrics.exposition import metrics_listener
    from allocation_ledger.adapters.metrics.instruments import LedgerMetrics

    configure_server_log(settings.log_level, args.log_format or settings.log_format)
    verifier: StaticTokenVerifier | None = None
    host = args.host or settings.http_host
    port = args.port if args.port is not None else settings.http_port
    path = args.path or settings.http_path
    try:
        hosts = [allowed_host(h) for h in args.allowed_host or ()]
        origins = [allowed_origin(o) for o in args.allowed_origin or ()]
    except ValueError as error:
        return fail(str(error), 2)
    hosts = hosts or settings.http_allowed_hosts
    origins = origins or settings.http_allowed_origins
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
    if args.metrics_port is not None and not 0 <= args.metrics_port < 65536:
        return fail(f"--metrics-port must be 0-65535, got {args.metrics_port}", 2)
    http_socket: socket.socket | None = None
    if args.transport == "http":
        try:
            http_socket = listen(host, port)
        except OSError as error:
            if isinstance(error, socket.gaierror) or (error.errno or 0) < 0:
                # getaddrinfo's errors are negative: the name did not resolve
                reason = (error.strerror or str(error)).split(" (while")[0]
                return fail(
                    f"cannot listen on {host}:{port}: {host!r} is not an address "
                    f"of this machine ({reason}); set --host or "
                    f"{ENV_PREFIX}HTTP_HOST to one",
                    1,
                )
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
        if http_socket is not None:
            http_socket.close()
        if isinstance(error, DatabaseError):
            return fail(str(error), 1)
        return fail(f"cannot open the ledger {ledger_location(settings)}: {error}", 1)
    logger.info("ledger: %s %s", settings.store, ledger_location(settings))
    try:
        config = os.environ.get(ENV_PREFIX + "CONFIG") or DEFAULT_FILE_LABEL
        for change in apply_catalog(service.ledger, settings.catalog, path=config):
            # The operator's own catalog, said whole (values passed as
            # arguments are cut to a field's length, for what callers send).
            logger.info("config: " + change)
    except CatalogError as error:
        service.close()
        if http_socket is not None:
            http_socket.close()
        return fail(str(error), 2)
    except LedgerError as error:
        service.close()
        if http_socket is not None:
            http_socket.close()
        return fail(f"cannot apply the catalog of the config file: {error}", 2)
    metrics = LedgerMetrics(service, TOOLS)
    listener = contextlib.ExitStack()
    if args.metrics_port is not None:
        where = f"{args.metrics_host}:{args.metrics_port}"
        try:
            url = listener.enter_context(
                metrics_listener(
                    metrics.registry, host=args.metrics_host, port=args.metrics_port
                )
            )
        except OSError as error:
            service.close()
            if http_socket is not None:
                http_socket.close()
            return fail(f"cannot serve metrics on {where}: {error}", 1)
        logger.info("serving metrics on %s", url)
    try:
        if args.transport == "stdio":
            from allocation_ledger.adapters.mcp.server import stdio_server
            from allocation_ledger.adapters.mcp.stdio import run_stdio

            anyio.run(run_stdio, stdio_server(service, metrics=metrics))
        else:
            from allocation_ledger.adapters.mcp.server import http_app, serve_http

            app = http_app(
                service,
                host=host,
                path=path,
                verifier=verifier,
                stateless=args.stateless or settings.http_stateless,
                allowed_hosts=hosts,
                allowed_origins=origins,
                sessions_per_token=settings.http_sessions_per_token,
                session_idle_seconds=settings.http_session_idle_seconds,
                metrics=metrics,
            )
            auth = (
                "without authentication" if verifier is None else "with bearer tokens"
            )
            logger.info("serving MCP on http://%s:%d%s %s", host, port, path, auth)
            _say_allowed_hosts(host, hosts)
            anyio.run(
                functools.partial(
                    serve_http,
                    app,
                    host=host,
                    port=port,
                    log_level=settings.log_level,
                    sock=http_socket,
                )
            )
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
        service.close()
    return 0
