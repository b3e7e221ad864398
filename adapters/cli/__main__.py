"""`python -m allocation_ledger.adapters.cli`: the command line, as installed."""

import sys

from allocation_ledger.adapters.cli.entry_point import main

sys.exit(main())
