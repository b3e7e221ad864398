"""The server's log on stderr, as an operator ships it: short lines,
whatever a request sent.

`plain`: one line per record, `time level logger: message` (time in UTC,
ISO 8601, milliseconds); an exception's traceback follows on its own
indented lines, as Python prints it, never boxed. `json`: one JSON object
per line, `{"time", "level", "logger", "message"}` and, with an
exception, `"exception"` (the traceback as one string), for log shippers.

Log records often repeat what a request supplied (a resource URI, a Host
header, a session id, a path). A client can make those megabytes long, and a
log that repeats them whole costs the server its time (the handler writes in
the event loop, holding every other request) and the operator their disk.
So every value a record is formatted with is cut to `FIELD_CHARACTERS`, and
every line of the formatted record (message or traceback) to
`LINE_CHARACTERS`, with a note of how much was left out.

It is set up before the MCP server is built, so the SDK's own logging
set-up (rich, boxed tracebacks) finds the root logger configured and
leaves it alone; uvicorn's loggers propagate to it too.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["plain", "json"]
FIELD_CHARACTERS = 200
LINE_CHARACTERS = 500


def shorten(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


def _short_value(value: Any) -> Any:
    if isinstance(value, str | bytes | bytearray):
        return shorten(
            str(value) if isinstance(value, str) else repr(value), FIELD_CHARACTERS
        )
    if isinstance(value, int | float | bool) or value is None:
        return value
    return shorten(str(value), FIELD_CHARACTERS)


def _short_lines(text: str) -> str:
    return "\n".join(shorten(line, LINE_CHARACTERS) for line in text.splitlines())


class ShortLines(logging.Filter):
    """Cuts what a record says to a bounded length (never drops a record).

    The record's arguments are cut one by one, then its formatted message
    line by line; an exception's traceback is formatted here and cut too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args
            if isinstance(args, dict):
                record.args = {k: _short_value(v) for k, v in args.items()}
            else:
                record.args = tuple(_short_value(v) for v in args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = shorten(str(record.msg), LINE_CHARACTERS)
        record.msg = _short_lines(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = _short_lines(
                "".join(traceback.format_exception(*record.exc_info)).rstrip()
            )
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = _short_lines(record.exc_text)
        return True


def _utc_time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class PlainFormatter(logging.Formatter):
    """`2026-11-26T20:00:00.123Z INFO allocation_ledger.x: message`."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_utc_time(record)} {record.levelname} {record.name}: "
            f"{record.getMessage()}"
        )
        trace = _traceback(self, record)
        if trace:
            line += "\n" + "\n".join(f"  {part}" for part in trace.splitlines())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _utc_time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace = _traceback(self, record)
        if trace:
            entry["exception"] = trace
        return json.dumps(entry, ensure_ascii=False)


def _traceback(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """The record's traceback (already cut by `ShortLines`), if any."""
    if record.exc_info:
        return formatter.formatException(record.exc_info)
    return record.exc_text or ""


def configure_server_log(level: str, log_format: LogFormat = "plain") -> None:
    """Send every log record at `level` or above to stderr in `log_format`,
    in short lines (`ShortLines`), replacing any handler the root logger had."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    handler.addFilter(ShortLines())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
