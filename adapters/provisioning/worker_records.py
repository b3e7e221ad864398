"""State files of running workers, so that a later run can adopt or stop them.

One JSON file per worker in `<data_dir>/run/workers/<worker_id>.json`
(quoted like the server state files, which live one level up and are not
read from here), written once the worker runs and removed when it ended.
The identity check is the servers' one: the pid with its command line and
its start time in /proc (`process_control.is_same_process`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from allocation_ledger.adapters.provisioning.limits import WorkerLimits


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

    def as_json(self) -> dict[str, Any]:
        """The file's content."""
        return {
            "worker_id": self.worker_id,
            "allocation_id": self.allocation_id,
            "pool": self.pool,
            "port": self.port,
            "pid": self.pid,
            "argv": list(self.argv),
            "start_ticks": self.start_ticks,
            "started_at": self.started_at,
            "limits": self.limits.as_detail(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerRecord:
        """Parse a record; raises ValueError (or KeyError, TypeError) when malformed."""
        argv = data["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
        ticks = data.get("start_ticks")
        return cls(
            worker_id=str(data["worker_id"]),
            allocation_id=str(data["allocation_id"]),
            pool=str(data["pool"]),
            port=int(data["port"]),
            pid=int(data["pid"]),
            argv=tuple(argv),
            start_ticks=None if ticks is None else int(ticks),
            started_at=str(data["started_at"]),
            limits=WorkerLimits.from_json(dict(data["limits"])),
        )


class WorkerRecords:
    """The workers' state files in one directory (created on first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, worker_id: str) -> Path:
        """Where the record of worker_id lives."""
        return self.directory / f"{quote(worker_id, safe='._-')}.json"

    def write(self, record: WorkerRecord) -> None:
        """Write (atomically replace) the record of its worker."""
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(record.worker_id)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(record.as_json(), indent=2) + "\n")
        os.replace(partial, target)

    def read(self, worker_id: str) -> WorkerRecord | None:
        """The record of worker_id; None when absent, unreadable or another's."""
        record = self._load(self.path(worker_id))
        return record if record is not None and record.worker_id == worker_id else None

    def remove(self, worker_id: str) -> None:
        """Forget the record of worker_id (no error when there is none)."""
        self.path(worker_id).unlink(missing_ok=True)

    def __iter__(self) -> Iterator[tuple[Path, WorkerRecord | None]]:
        """Every record file with its record (None when it does not parse)."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            yield path, self._load(path)

    @staticmethod
    def _load(path: Path) -> WorkerRecord | None:
        try:
            return WorkerRecord.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
