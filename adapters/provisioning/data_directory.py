"""One ledger process at a time runs the processes of a data directory: it
holds `<data_dir>/ledger.lock` (with its pid) for as long as it runs them."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


class DataDirectoryBusyError(RuntimeError):
    """Another ledger process runs the MCP servers of this data directory."""


def lock_data_directory(data_dir: Path) -> IO[str]:
    """Take `<data_dir>/ledger.lock` for this process (created if need be).

    Raises DataDirectoryBusyError naming the holder's pid when it is taken.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "ledger.lock"
    handle = open(path, "a+")  # noqa: SIM115 - held until close()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        msg = (
            f"another ledger (pid {holder}) runs the MCP servers of the data "
            f"directory {data_dir}; one ledger server per data directory and "
            "machine may use the process provisioner"
        )
        raise DataDirectoryBusyError(msg) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
