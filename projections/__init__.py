"""Read models folded from the ledger's events: capacity and allocation listing."""
