"""The ledger's MCP tools, in groups over one service: allocations, capacity,
scheduling and audit; which tools there are, and the scope each needs."""
