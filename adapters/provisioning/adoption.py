"""Is the process an earlier run recorded still ours, and still answering?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from allocation_ledger.adapters.provisioning import process_control as control
from allocation_ledger.adapters.provisioning.health import (
    HealthResult,
    check_endpoint_sync,
)
from allocation_ledger.adapters.provisioning.process_reports import (
    EventKind,
    ExitStatus,
    ProcessEvent,
)
from allocation_ledger.adapters.provisioning.run_records import RunRecord, RunRecords


@dataclass(frozen=True)
class RecordCheck:
    """The verdict on a record: adopt it when `reason` is None.

    `ours` says the recorded pid is alive and still the recorded process
    (same command line, same start time); only then may it be signalled.
    """

    record: RunRecord
    ours: bool
    reason: str | None
    health: HealthResult | None = None


def check_record(
    record: RunRecord, port: int, health_timeout_seconds: float
) -> RecordCheck:
    """Whether the recorded process can be adopted to serve on `port`.

    It must be alive and ours (/proc cmdline and start time), recorded on
    `port`, and its endpoint must answer MCP within the timeout (seconds).
    """
    if not control.is_same_process(record.pid, record.argv, record.start_ticks):
        gone = not control.is_alive(record.pid)
        reason = "its process is gone" if gone else "its pid belongs to another program"
        return RecordCheck(record, ours=False, reason=reason)
    if record.port != port:
        reason = f"it listens on port {record.port}, not {port}"
        return RecordCheck(record, ours=True, reason=reason)
    health = check_endpoint_sync(record.endpoint, health_timeout_seconds)
    if not health.ok:
        reason = f"it does not answer: {health.error}"
        return RecordCheck(record, ours=True, reason=reason, health=health)
    return RecordCheck(record, ours=True, reason=None, health=health)


def stop_recorded(
    record: RunRecord, grace_seconds: float, now: Callable[[], datetime]
) -> dict[str, Any]:
    """Stop the recorded process group (the caller checked it is ours); the facts.

    Returns `{"forced": bool, "code": ..., "signal": ...}` (code and signal
    are None when the process was not a child of ours). Waits until its port
    is free (up to 5 s).
    """
    forced, returncode = control.terminate_group(record.pid, grace_seconds)
    control.wait_port_free(record.host, record.port, 5.0)
    ended = ExitStatus.from_returncode(returncode, now())
    return {"forced": forced} | ended.as_detail()


def discard_record(
    records: RunRecords,
    record: RunRecord,
    reason: str,
    now: Callable[[], datetime],
    ours: bool | None = None,
) -> ProcessEvent:
    """Stop the recorded process when it is still ours, and forget the record.

    The event is `stopped` (detail: reason, forced, code, signal) when a
    process was stopped, else `discarded` (detail: reason).
    """
    if ours is None:
        ours = control.is_same_process(record.pid, record.argv, record.start_ticks)
    detail: dict[str, Any] = {"reason": reason}
    if ours:
        detail |= stop_recorded(record, 5.0, now)
    records.remove(record.pool, record.name)
    kind: EventKind = "stopped" if ours else "discarded"
    return ProcessEvent(
        kind, record.pool, record.name, record.port, record.pid, now(), detail
    )
