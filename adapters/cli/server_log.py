"""The server's log on stderr, as an operator ships it.

`plain`: one line per record, `time level logger: message` (time in UTC,
ISO 8601, milliseconds); an exception's traceback follows on its own
indented lines, as Python prints it, never boxed. `json`: one JSON object
per line, `{"time", "level", "logger", "message"}` and, with an
exception, `"exception"` (the traceback as one string), for log shippers.

It is set up before the MCP server is built, so the SDK's own logging
set-up (rich, boxed tracebacks) finds the root logger configured and
leaves it alone; uvicorn's loggers propagate to it too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

LogFormat = Literal["plain", "json"]


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
        if record.exc_info:
            trace = self.formatException(record.exc_info)
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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_server_log(level: str, log_format: LogFormat) -> None:
    """Send every log record at `level` or above to stderr in `log_format`,
    replacing any handler the root logger had."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
