"""The `allocation-ledger` command line (`main`, the installed entry point).

`python -m allocation_ledger.adapters.cli` runs it too (see `__main__`).
"""

from allocation_ledger.adapters.cli.entry_point import main

__all__ = ["main"]
