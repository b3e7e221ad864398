"""Tool arguments that did not validate, told as one sentence per problem.

pydantic's own report ("1 validation error for set_capacityArguments\\n
workers\\n  Input should be less than or equal to 1000 [type=less_than_equal,
input_value=5000, input_type=int]\\n    For further information visit ...")
becomes "workers: must be at most 1000, got 5000". Values are quoted as
JSON, as the client sent them, and cut short: a huge argument is never
echoed back.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

MAX_QUOTED = 60
"""Longest quotation of a value, in characters."""

_KINDS = {
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "datetime_type": "must be an ISO 8601 time such as 2026-11-26T09:00:00Z",
    "datetime_parsing": "must be an ISO 8601 time such as 2026-11-26T09:00:00Z",
    "datetime_from_date_parsing": (
        "must be an ISO 8601 time such as 2026-11-26T09:00:00Z"
    ),
    "timezone_aware": "must carry a UTC offset, e.g. 2026-11-26T09:00:00Z",
}
_BOUNDS = {
    "greater_than_equal": ("ge", "must be at least {}"),
    "greater_than": ("gt", "must be more than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "less_than": ("lt", "must be less than {}"),
    "literal_error": ("expected", "must be {}"),
    "enum": ("expected", "must be {}"),
    "string_pattern_mismatch": ("pattern", "must match the pattern {}"),
}


def argument_problems(error: ValidationError, arguments: Collection[str]) -> str:
    """Every problem of `error`, one sentence each, joined by "; ".

    `arguments` are the tool's argument names, to suggest one for a
    misspelt name. Two errors on one place (a union's branches) become one
    sentence.
    """
    sentences: dict[str, list[str]] = {}
    for detail in error.errors():
        place = _place(detail["loc"])
        text = _problem(detail, place, arguments)
        said = sentences.setdefault(place, [])
        if text not in said:
            said.append(text)
    return "; ".join(
        f"{place}: {' or '.join(texts)}" if place else " or ".join(texts)
        for place, texts in sentences.items()
    )


def _place(location: Sequence[int | str]) -> str:
    """Where the problem is: "mcp_servers[2]", "preemption.high", or
    'preemption key "urgent"' for a bad key of an object."""
    place = ""
    for part in location:
        if part == "[key]":
            parent, _, key = place.rpartition(".")
            place = f"{parent} key {json.dumps(key)}"
        elif isinstance(part, int):
            place += f"[{part}]"
        elif place and not _is_type_tag(part):
            place += f".{part}"
        elif not place:
            place = part
    return place


def _is_type_tag(part: str) -> bool:
    """pydantic names a union's branch by its type in the location, e.g.
    "function-after[...]" or "str"; those say nothing about the place."""
    return "[" in part or part in ("str", "int", "float", "bool", "list", "dict")


def _problem(detail: ErrorDetails, place: str, arguments: Collection[str]) -> str:
    kind = detail["type"]
    context: dict[str, Any] = dict(detail.get("ctx") or {})
    value = detail.get("input")
    if kind == "missing":
        return "required (missing)"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(place, list(arguments), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"not an argument of this tool{hint}"
    if kind in ("value_error", "assertion_error") and "error" in context:
        said = str(context["error"])
        return said.removeprefix(f"{place} ") if place else said
    if kind in ("string_too_short", "too_short"):
        least = int(context.get("min_length", 0))
        unit = "character" if kind == "string_too_short" else "item"
        got = _quote(value) if kind == "string_too_short" else _count(value)
        plural = "" if least == 1 else "s"
        return f"must have at least {least} {unit}{plural}, got {got}"
    if kind in ("string_too_long", "too_long"):
        most = context.get("max_length")
        unit = "characters" if kind == "string_too_long" else "items"
        return f"must have at most {most} {unit}, got {_count(value)}"
    if kind in _KINDS:
        return f"{_KINDS[kind]}, got {_quote(value)}"
    if kind in _BOUNDS:
        key, wording = _BOUNDS[kind]
        return f"{wording.format(context.get(key))}, got {_quote(value)}"
    message = detail["msg"]
    return f"{message[:1].lower()}{message[1:]}, got {_quote(value)}"


def _count(value: object) -> str:
    """How long a value is, without quoting it."""
    if isinstance(value, str):
        return f"{len(value)} characters"
    if isinstance(value, list | tuple | dict):
        return f"{len(value)} items"
    return _quote(value)


def _quote(value: object) -> str:
    """The value as JSON, cut to MAX_QUOTED characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) > MAX_QUOTED:
        text = text[: MAX_QUOTED - 1] + "…"
    return text
