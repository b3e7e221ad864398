"""The ledger on its store: opening it, SQL read models, reading the log fast,
the wall clock, and the operator's audit queries over the stored history."""
