"""Provisioners: what makes the ledger's decisions real (endpoints, processes)."""
