"""Tenants: whose allocations a caller sees and acts on (design contract,
"Tenants").

An allocation belongs to the tenant recorded on its `Requested` event (None:
no tenant, e.g. made by the local caller without naming one). Its
`request_id`, its place in a queue and its usage belong to that tenant too.
A caller confined to one tenant is told about any other tenant's allocation
exactly what it is told about an allocation that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from allocation_ledger.domain.errors import AllocationNotFoundError


@dataclass(frozen=True)
class Visibility:
    """The allocations a caller may see and act on: those of `tenant`, or
    those of every tenant when `tenant` is None (an admin token, the local
    caller over stdio, every caller of a server without authentication).

    No caller is confined to the allocations without a tenant: whoever
    makes those (the local caller) sees every tenant's.
    """

    tenant: str | None

    def includes(self, tenant: str | None) -> bool:
        """Whether an allocation of `tenant` is visible."""
        return self.tenant is None or tenant == self.tenant

    def check(self, allocation_id: str, tenant: str | None) -> None:
        """Raise AllocationNotFoundError, as for an allocation that does not
        exist, when allocation `allocation_id` of `tenant` is not visible."""
        if not self.includes(tenant):
            raise AllocationNotFoundError(allocation_id)


EVERY_TENANT = Visibility(None)
"""What commands and queries see unless told otherwise: everything."""
