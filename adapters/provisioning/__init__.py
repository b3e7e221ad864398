"""Provisioners: what makes the ledger's decisions real (endpoints, processes)."""

# This package shadows the module adapters/provisioning.py, whose provisioner
# lives on as provisioning/local.py; re-exported for the existing imports.
from allocation_ledger.adapters.provisioning.local import LocalProvisioner

__all__ = ["LocalProvisioner"]
