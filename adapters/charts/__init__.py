"""Charts of the ledger's history, drawn from a replay of its event log."""
