"""The `allocation-ledger` command line (`main`, the installed entry point).

`python -m allocation_ledger.adapters.cli` runs it too (see `__main__`).
`allocation-ledger --version` answers without importing the rest (the
ledger, the MCP SDK, the stores): a second of imports for one line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PROG = "allocation-ledger"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; `argv` without the program name (default:
    sys.argv[1:]). Returns the exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments == ["--version"]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"{PROG} {version('allocation-ledger')}")
        except PackageNotFoundError:
            print(f"{PROG} unknown")
        return 0
    from allocation_ledger.adapters.cli.entry_point import main as run

    return run(arguments)


__all__ = ["main"]
