"""Access to the PostgreSQL server for the tests that need one.

Outside CI a missing server skips those tests with the reason; in CI
(CI=true) it fails them, so a green run always means they ran.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from allocation_ledger.adapters.config.settings import Settings

HOST = os.environ.get("ALLOCATION_LEDGER_TEST_POSTGRES_HOST", "127.0.0.1")
PORT = int(os.environ.get("ALLOCATION_LEDGER_TEST_POSTGRES_PORT", "5432"))
USER = os.environ.get("ALLOCATION_LEDGER_TEST_POSTGRES_USER", "postgres")
DBNAME = os.environ.get("ALLOCATION_LEDGER_TEST_POSTGRES_DBNAME", "test")


def _connect() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=HOST,
        port=PORT,
        user=USER,
        dbname=DBNAME,
        autocommit=True,
        connect_timeout=3,
    )


def require_postgres() -> None:
    try:
        _connect().close()
    except psycopg.OperationalError as error:
        reason = f"PostgreSQL at {HOST}:{PORT}/{DBNAME} is unreachable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI requires it)")
        pytest.skip(reason)


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A fresh, empty schema in the test database, dropped afterwards."""
    require_postgres()
    schema = f"ledger_test_{uuid.uuid4().hex[:10]}"
    with _connect() as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with _connect() as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_settings(schema: str) -> Settings:
    """Settings for a ledger on the test database, in `schema`."""
    return Settings(
        store="postgres",
        postgres_host=HOST,
        postgres_port=PORT,
        postgres_user=USER,
        postgres_dbname=DBNAME,
        postgres_schema=schema,
    )
