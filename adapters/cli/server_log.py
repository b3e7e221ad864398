"""The served ledger's log on stderr: short lines, whatever a request sent.

Log records often repeat what a request supplied (a resource URI, a Host
header, a session id, a path). A client can make those megabytes long, and a
log that repeats them whole costs the server its time (the handler writes in
the event loop, holding every other request) and the operator their disk.
So every value a record is formatted with is cut to `FIELD_CHARACTERS`, and
every line of the formatted record (message or traceback) to
`LINE_CHARACTERS`, with a note of how much was left out.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any

FIELD_CHARACTERS = 200
LINE_CHARACTERS = 500
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


def configure_server_log(level: str) -> None:
    """Send every record at `level` and above to stderr, in short lines.

    The MCP SDK then keeps this handler (it configures logging only when the
    root logger has none). Calling it again changes only the level.
    """
    root = logging.getLogger()
    root.setLevel(level)
    if any(isinstance(h, _ServerLogHandler) for h in root.handlers):
        return
    handler = _ServerLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(ShortLines())
    root.addHandler(handler)


class _ServerLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler `configure_server_log` installs."""
