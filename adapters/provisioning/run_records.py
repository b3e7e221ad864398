"""State files of running processes (`StateFiles`), so that a later run can
find them again: one JSON file per process, written when it starts (or is
adopted), removed when it is stopped or found gone. An MCP server's is
`<data_dir>/run/<pool>-<name>.json` (`RunRecords`), a worker's
`<data_dir>/run/workers/<worker_id>.json` (`WorkerRecords`). File names quote
anything but letters, digits, `.`, `_` and `-`; the key inside is what counts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

from allocation_ledger.adapters.provisioning.limits import WorkerLimits


def file_stem(*parts: str) -> str:
    """The parts, quoted to be a safe file name, joined by `-` (a server's
    `<pool>-<name>` also names its log file)."""
    return "-".join(quote(part, safe="._-") for part in parts)


def parse_identity(data: dict[str, Any]) -> tuple[int, tuple[str, ...], int | None]:
    """(pid, argv, start_ticks) of a state file; raises ValueError (or
    KeyError, TypeError) when malformed."""
    argv = data["argv"]
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError("argv must be a list of strings")
    ticks = data.get("start_ticks")
    start_ticks = None if ticks is None else int(str(ticks))
    return int(str(data["pid"])), tuple(argv), start_ticks


class Record(Protocol):
    """What a state file holds: its `key` (the parts of its file name) and
    its JSON."""

    @property
    def key(self) -> tuple[str, ...]: ...

    def as_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Record)


class StateFiles(Generic[R]):
    """The state files in one directory (created on first write), by the
    records' keys; `parse` reads one from its JSON (raising ValueError,
    KeyError, TypeError or AttributeError when malformed)."""

    def __init__(self, directory: Path, parse: Callable[[dict[str, Any]], R]) -> None:
        self.directory = directory
        self._parse = parse

    def path(self, *key: str) -> Path:
        """Where the record of key lives."""
        return self.directory / f"{file_stem(*key)}.json"

    def write(self, record: R) -> None:
        """Write (atomically replace) the record of its key."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(*record.key)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(record.as_json(), indent=2) + "\n")
        os.replace(partial, target)

    def read(self, *key: str) -> R | None:
        """The record of key; None when absent, unreadable or another's."""
        record = self._load(self.path(*key))
        return record if record is not None and record.key == key else None

    def remove(self, *key: str) -> None:
        """Forget the record of key (no error when there is none)."""
        self.path(*key).unlink(missing_ok=True)

    def remove_file(self, path: Path) -> None:
        """Forget a record file that does not parse."""
        path.unlink(missing_ok=True)

    def __iter__(self) -> Iterator[tuple[Path, R | None]]:
        """Every record file with its record (None when it does not parse)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            yield path, self._load(path)

    def _load(self, path: Path) -> R | None:
        try:
            return self._parse(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


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

    @property
    def key(self) -> tuple[str, str]:
        """(pool, name)."""
        return self.pool, self.name

    def as_json(self) -> dict[str, Any]:
        """The file's content."""
        return asdict(self) | {"argv": list(self.argv)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """Parse a record; raises ValueError (or KeyError, TypeError) when malformed."""
        pid, argv, ticks = parse_identity(data)
        return cls(
            pool=str(data["pool"]),
            name=str(data["name"]),
            pid=pid,
            port=int(str(data["port"])),
            host=str(data["host"]),
            endpoint=str(data["endpoint"]),
            argv=argv,
            start_ticks=ticks,
            started_at=str(data["started_at"]),
        )


class RunRecords(StateFiles[RunRecord]):
    """The servers' state files in one directory, by (pool, name)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, RunRecord.from_json)


@dataclass(frozen=True)
class WorkerRecord:
    """What identifies a worker process of an earlier run, and its limits."""

    worker_id: str
    allocation_id: str
    pool: str
    port: int
    pid: int
    argv: tuple[str, ...]
    start_ticks: int | None
    started_at: str
    limits: WorkerLimits

    @property
    def key(self) -> tuple[str]:
        """(worker_id,)."""
        return (self.worker_id,)

    def as_json(self) -> dict[str, Any]:
        """The file's content (its limits as `WorkerLimits.as_detail`)."""
        return asdict(self) | {"argv": list(self.argv)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerRecord:
        """Parse a record; raises ValueError (or KeyError, TypeError) when malformed."""
        pid, argv, ticks = parse_identity(data)
        return cls(
            worker_id=str(data["worker_id"]),
            allocation_id=str(data["allocation_id"]),
            pool=str(data["pool"]),
            port=int(data["port"]),
            pid=pid,
            argv=argv,
            start_ticks=ticks,
            started_at=str(data["started_at"]),
            limits=WorkerLimits.from_json(dict(data["limits"])),
        )


class WorkerRecords(StateFiles[WorkerRecord]):
    """The workers' state files in one directory, by worker id."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, WorkerRecord.from_json)
