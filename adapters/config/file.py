"""Reading the config file: the settings at its top level, the catalog beside them.

The TOML file named by ALLOCATION_LEDGER_CONFIG holds settings (top-level
keys such as `store`, `http_port`) and the catalog (`provisioner`,
`[mcp_servers.NAME]`, `[pools.NAME]`; see `catalog.py`). `Settings` reads it
through `ConfigFileSource`, which hands the settings keys on and checks the
catalog into `Settings.catalog`; `load_catalog(path)` reads the catalog alone.

Every mistake in the file is raised as one `CatalogError` whose text is one
line naming the file, the entry and the key:

    config.toml: invalid TOML at line 3, column 9: expected '=' after a key ...
    config.toml: unknown key "mcp_server" (known: store, ..., mcp_servers, pools)
    config.toml: provisioner: must be "process" or "endpoints", got "docker"
    config.toml: [mcp_servers.time] command: missing (required)
    config.toml: [mcp_servers.time] transport: must be "stdio" or "http", got "tcp"
    config.toml: [pools.big-box] unknown key "cpus" (known: cpu, memory, ...)
    config.toml: [pools.big-box] worker_memory: must not be negative, got -1

Mistakes in the values of settings keys stay pydantic's ValidationError, as
before. A file that is named but missing is an error, not an empty file.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, InitSettingsSource

from allocation_ledger.adapters.config.catalog import (
    CATALOG_KEYS,
    ERROR_KIND_PREFIX,
    Catalog,
    CatalogError,
    Provisioner,
    entry_name,
)
from allocation_ledger.adapters.config.entries import McpServerEntry, PoolEntry
from allocation_ledger.domain.errors import InvalidRequestError
from allocation_ledger.domain.values import validate_pool_name, validate_server_name

CATALOG_FIELD = "catalog"
"""The Settings field the catalog is handed on in."""

EntryT = TypeVar("EntryT", bound=BaseModel)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The file's TOML as a dict; CatalogError if it cannot be read or parsed."""
    try:
        with Path(path).open("rb") as file:
            return tomllib.load(file)
    except OSError as error:
        problem = error.strerror or str(error)
        raise CatalogError(
            path, None, None, f"cannot read the file: {problem}"
        ) from None
    except UnicodeDecodeError:
        raise CatalogError(path, None, None, "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise CatalogError(path, None, None, _toml_problem(str(error))) from None


def load_catalog(path: str | Path) -> Catalog:
    """The catalog in the config file at `path` (its settings keys are ignored).

    Raises CatalogError (one line) for any mistake in the catalog.
    """
    return parse_catalog(read_config_file(path), path)


def parse_catalog(data: Mapping[str, Any], path: str | Path) -> Catalog:
    """The catalog in a parsed config file; `path` only names it in errors."""
    provisioner: Provisioner | None = None
    if "provisioner" in data:
        value = data["provisioner"]
        allowed = get_args(Provisioner)
        if value not in allowed:
            choices = " or ".join(f'"{v}"' for v in allowed)
            problem = f"must be {choices}, got {_show(value)}"
            raise CatalogError(path, None, "provisioner", problem)
        provisioner = value
    servers = _entries(data, "mcp_servers", McpServerEntry, validate_server_name, path)
    pools = _entries(data, "pools", PoolEntry, validate_pool_name, path)
    try:
        return Catalog(mcp_servers=servers, pools=pools, provisioner=provisioner)
    except ValidationError as error:  # the number of pools, or their ports
        first = error.errors(include_url=False)[0]
        if first["type"] == "catalog_port_overlap":  # names entry and key itself
            raise CatalogError(path, None, None, _problem(first)) from None
        raise CatalogError(path, None, "pools", _problem(first)) from None


def split_config(
    data: Mapping[str, Any], path: str | Path, settings_keys: Iterable[str]
) -> tuple[dict[str, Any], Catalog | None]:
    """The settings keys of a parsed config file, and its catalog (None if
    it has no catalog key). Settings keys match without regard to case, as
    Settings reads them; an unknown top-level key is a CatalogError."""
    settings_keys = list(settings_keys)
    lowered = {key.lower() for key in settings_keys}
    for key in data:
        if key not in CATALOG_KEYS and key.lower() not in lowered:
            known = [*settings_keys, *CATALOG_KEYS]
            raise CatalogError(
                path, None, key, _unknown(key, known), field_in_problem=True
            )
    settings = {k: v for k, v in data.items() if k not in CATALOG_KEYS}
    has_catalog = any(key in data for key in CATALOG_KEYS)
    return settings, parse_catalog(data, path) if has_catalog else None


class ConfigFileSource(InitSettingsSource):
    """Settings' source for the config file: the settings keys as they are,
    the catalog checked and handed on as the `catalog` field.

    Raises CatalogError (one line) while Settings is built, before any
    setting is validated.
    """

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        # `config` names this file: the file cannot name another.
        keys = [
            name
            for name in settings_cls.model_fields
            if name not in (CATALOG_FIELD, "config")
        ]
        settings, catalog = split_config(read_config_file(path), path, keys)
        if catalog is not None:
            settings[CATALOG_FIELD] = catalog
        super().__init__(settings_cls, settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# -- one entry table at a time ---------------------------------------------------


def _entries(
    data: Mapping[str, Any],
    table: str,
    model: type[EntryT],
    check_name: Callable[[object], None],
    path: str | Path,
) -> dict[str, EntryT]:
    found = data.get(table, {})
    if not isinstance(found, dict):
        problem = f"must be a table of [{table}.NAME] entries, got {_show(found)}"
        raise CatalogError(path, None, table, problem)
    known = list(model.model_fields)
    entries: dict[str, EntryT] = {}
    for name, fields in found.items():
        entry = entry_name(table, name)
        try:
            check_name(name)
        except InvalidRequestError as error:
            raise CatalogError(path, entry, None, str(error)) from None
        if not isinstance(fields, dict):
            problem = (
                f"must be a table of keys ({', '.join(known)}), got {_show(fields)}"
            )
            raise CatalogError(path, entry, None, problem)
        for key, value in fields.items():
            if key not in known:
                problem = _unknown(key, known)
                if isinstance(value, dict):
                    problem += (
                        "; a name with a dot must be quoted, e.g. "
                        f"[{entry_name(table, f'{name}.{key}')}]"
                    )
                raise CatalogError(path, entry, key, problem, field_in_problem=True)
        try:
            entries[name] = model.model_validate(fields)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            problem = _problem(first)
            if first["type"] == "list_type" and first["loc"][0] in _PORT_RANGE_KEYS:
                got = _show(first.get("input"))
                problem = f"must be [first, last], two port numbers, got {got}"
            raise CatalogError(path, entry, _label(first["loc"]), problem) from None
    return entries


# -- wording ---------------------------------------------------------------------

_PORT_RANGE_KEYS = ("mcp_ports", "worker_ports")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(r"(.*) \(at line (\d+), column (\d+)\)", re.DOTALL)
_TOML_END = re.compile(r"(.*) \(at end of document\)", re.DOTALL)
_SIMPLE_PROBLEMS = {
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "string_type": "must be a string",
    "list_type": "must be a list of strings",
    "dict_type": "must be a table",
    "bool_type": "must be true or false",
}


def _toml_problem(message: str) -> str:
    if found := _TOML_POSITION.fullmatch(message):
        text, line, column = found.groups()
        return f"invalid TOML at line {line}, column {column}: {_lower_first(text)}"
    if found := _TOML_END.fullmatch(message):
        return f"invalid TOML at the end of the file: {_lower_first(found[1])}"
    return f"invalid TOML: {_lower_first(message)}"


def _unknown(key: str, known: Iterable[str]) -> str:
    return f"unknown key {_show(key)} (known: {', '.join(known)})"


def _label(loc: tuple[int | str, ...]) -> str | None:
    label = ""
    for item in loc:
        if isinstance(item, int):
            label += f"[{item}]"
        elif item == "[key]":
            continue
        elif not label:
            label = item
        elif _BARE_KEY.fullmatch(item):
            label += f".{item}"
        else:
            label += f".{json.dumps(item, ensure_ascii=False)}"
    return label or None


def _problem(error: ErrorDetails) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    got = _show(error.get("input"))
    if kind == "missing":
        return "missing (required)"
    if kind == "literal_error":
        expected = str(context.get("expected", "")).replace("'", '"')
        return f"must be {expected}, got {got}"
    if kind == "greater_than_equal":
        if context["ge"] == 0:
            return f"must not be negative, got {got}"
        return f"must be at least {_show(context['ge'])}, got {got}"
    if kind == "greater_than":
        return f"must be more than {_show(context['gt'])}, got {got}"
    if kind == "less_than_equal":
        return f"must be at most {_show(context['le'])}, got {got}"
    if kind in _SIMPLE_PROBLEMS:
        return f"{_SIMPLE_PROBLEMS[kind]}, got {got}"
    message = error["msg"].removeprefix("Value error, ")
    if kind.startswith(ERROR_KIND_PREFIX):
        return message
    return f"{_lower_first(message)}, got {got}"


def _show(value: object) -> str:
    """A value as the TOML file spells it, cut short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(item) for item in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
