"""The settings a command runs with: the environment, the config file, and
the command line's --config and --database; every mistake in them worded as
one line naming the setting and the fix."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from pydantic import ValidationError
from pydantic_settings import SettingsError

from allocation_ledger.adapters.config.catalog import CatalogError
from allocation_ledger.adapters.config.settings import ENV_PREFIX, Settings
from allocation_ledger.adapters.http.tokens import SECRET_KEYS

SECRET_SETTINGS = (*SECRET_KEYS, "postgres_password", "postgres_dsn")
"""Settings (and token keys) whose values a message never repeats."""

TOKENS_SHAPE = (
    'a JSON list such as [{"subject": "ci", "scopes": ["read", "write"], '
    '"token_sha256": "<64 hex digits>"}]'
)
_FIELD = re.compile(r'field "([A-Za-z0-9_]+)"')


class SettingsProblem(Exception):
    """A setting is wrong; the message is one line saying which and how to fix it."""


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings, with --config FILE and --database PATH (a SQLite file;
    it sets the store to sqlite) over the environment's.

    Raises SettingsProblem.
    """
    overrides: dict[str, object] = {}
    config: Path | None = getattr(args, "config", None)
    named_by = "--config"
    if config is None and os.environ.get(ENV_PREFIX + "CONFIG"):
        config = Path(os.environ[ENV_PREFIX + "CONFIG"])
        named_by = ENV_PREFIX + "CONFIG"
    if config is not None:
        if not config.is_file():
            what = "is a directory" if config.is_dir() else "does not exist"
            fix = (
                "fix the path" if named_by == "--config" else f"fix or unset {named_by}"
            )
            msg = f"the config file {config} (named by {named_by}) {what}: {fix}"
            raise SettingsProblem(msg)
        overrides["config"] = config
    database: Path | None = getattr(args, "database", None)
    if database is not None:
        overrides |= {"store": "sqlite", "database": database}
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except CatalogError as error:
        raise SettingsProblem(str(error)) from None
    except SettingsError as error:
        raise SettingsProblem(_source_problem(error)) from None
    except ValidationError as error:
        raise SettingsProblem(_validation_problem(error, config)) from None


def _source_problem(error: SettingsError) -> str:
    """An environment variable the settings could not parse (JSON ones)."""
    found = _FIELD.search(str(error))
    name = ENV_PREFIX + (found[1].upper() if found else "?")
    cause = error.__cause__ or error.__context__
    if isinstance(cause, json.JSONDecodeError):
        shape = TOKENS_SHAPE if name == ENV_PREFIX + "TOKENS" else "JSON"
        return f"{name} is not valid JSON ({cause}); it takes {shape}"
    return f"{name} cannot be read: {cause or error}"


def _validation_problem(error: ValidationError, config: Path | None = None) -> str:
    """Each invalid setting, as `NAME: problem, got value`, on one line.
    NAME is the environment variable, or `FILE: key` when the value came
    from the config file (the variable, which wins, is not set)."""
    problems = []
    for item in error.errors(include_url=False):
        location = [str(part) for part in item["loc"]]
        name = ENV_PREFIX + location[0].upper() if location else "settings"
        if location and config is not None and name not in os.environ:
            name = f"{config}: {location[0]}"
        where = "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in location[1:])
        got = item.get("input")
        secret = bool(location) and location[-1] in SECRET_SETTINGS
        shown = "" if secret or isinstance(got, dict) else f", got {got!r}"
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"{name}{where}: {message[:1].lower()}{message[1:]}{shown}")
    return "invalid settings: " + "; ".join(problems)
