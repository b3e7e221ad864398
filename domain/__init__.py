"""The allocation domain: aggregates, events, value objects and the Ledger."""
