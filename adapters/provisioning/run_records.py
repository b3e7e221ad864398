"""State files of running MCP servers, so that a later run can find them again.

One JSON file per server in `<data_dir>/run/<pool>-<name>.json`, written
when a process starts (or is adopted) and removed when it is stopped or found
gone. The file names quote anything but letters, digits, `.`, `_` and `-`;
the pool and name inside the file are what count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote


def file_stem(pool: str, name: str) -> str:
    """`<pool>-<name>`, quoted to be a safe file name; also names the log file."""
    return f"{quote(pool, safe='._-')}-{quote(name, safe='._-')}"


@dataclass(frozen=True)
class RunRecord:
    """What identifies a server process of an earlier run.

    `start_ticks` is the process's start time from /proc/PID/stat (clock ticks
    since boot): with `argv` it tells our process from another that got the
    same pid later. `started_at` is the ISO 8601 time of the start.
    """

    pool: str
    name: str
    pid: int
    port: int
    host: str
    endpoint: str
    argv: tuple[str, ...]
    start_ticks: int | None
    started_at: str

    @classmethod
    def from_json(cls, data: dict[str, object]) -> RunRecord:
        """Parse a record; raises ValueError (or KeyError, TypeError) when malformed."""
        argv = data["argv"]
        ticks = data.get("start_ticks")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
        return cls(
            pool=str(data["pool"]),
            name=str(data["name"]),
            pid=int(str(data["pid"])),
            port=int(str(data["port"])),
            host=str(data["host"]),
            endpoint=str(data["endpoint"]),
            argv=tuple(argv),
            start_ticks=None if ticks is None else int(str(ticks)),
            started_at=str(data["started_at"]),
        )


class RunRecords:
    """The state files in one directory (created on first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, pool: str, name: str) -> Path:
        """Where the record of (pool, name) lives."""
        return self.directory / f"{file_stem(pool, name)}.json"

    def write(self, record: RunRecord) -> None:
        """Write (atomically replace) the record of its (pool, name)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(record.pool, record.name)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        data = asdict(record) | {"argv": list(record.argv)}
        partial.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(partial, target)

    def read(self, pool: str, name: str) -> RunRecord | None:
        """The record of (pool, name); None when absent, unreadable or another's."""
        record = self._load(self.path(pool, name))
        if record is None or (record.pool, record.name) != (pool, name):
            return None
        return record

    def remove(self, pool: str, name: str) -> None:
        """Forget the record of (pool, name) (no error when there is none)."""
        self.path(pool, name).unlink(missing_ok=True)

    def remove_file(self, path: Path) -> None:
        """Forget a record file that does not parse."""
        path.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[tuple[Path, RunRecord | None]]:
        """Every record file with its record (None when it does not parse)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            yield path, self._load(path)

    @staticmethod
    def _load(path: Path) -> RunRecord | None:
        try:
            data = json.loads(path.read_text())
            return RunRecord.from_json(data)
        except (OSError, ValueError, KeyError, TypeError):
            return None
