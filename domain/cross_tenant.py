"""Preemption across tenants: which other tenants' allocations a request may
take (docs/scheduling.md, "Preemption across tenants").

Priorities are chosen by whoever asks, so across tenants they prove nothing.
The pool's `cross_tenant_preemption` setting (scheduling.py) decides:

- `any`: priorities compare across tenants as within one;
- `never`: a request preempts only allocations of its own tenant;
- `over_quota` (a new pool's default; the rule Kueue applies within a cohort
  with `reclaimWithinCohort: LowerPriority`): an allocation of another
  tenant is a candidate only if, at the moment of the decision, that tenant
  is **over its quota** in the pool (what its live allocations hold exceeds
  its quota in some dimension: CPU, memory or workers) and the allocation
  holds some of a dimension it is over in, so that preempting it brings the
  tenant back toward its quota. A tenant without a quota in the pool is
  never over it.

"Its own tenant" is the request's tenant compared with the allocation's,
None (no tenant: stdio and `--no-auth` callers who name none) being a tenant
like any other: a server without tenants preempts as it always did. Being
an admin changes nothing here: the rule looks at tenants, not at callers.

Eligibility is decided once per decision, before the victims are searched
(preemption.py keeps its exact rule over the candidates that pass): which
tenants are over quota is worked out from the pool as the decision finds it,
and not again as victims are chosen. So one decision may take several
allocations of a tenant that is over its quota, or one bigger than its
excess, and leave it below its quota; the next decision finds it within its
quota and takes nothing more of it. No allocation of a tenant within its
quota is ever preempted by another tenant under `over_quota`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from allocation_ledger.domain.capacity import AMOUNTS
from allocation_ledger.domain.pool_state import PoolState, Reservation
from allocation_ledger.domain.scheduling import CrossTenantPreemption
from allocation_ledger.domain.values import Dimension, Resources

WITHIN_QUOTA = "other_tenants_within_quota"
NOT_ACROSS_TENANTS = "other_tenants_never_preempted"
"""What a refusal's (or a queued request's) `preemption` says when
preemption did not help only because of this rule: the allocations its
priority could preempt and that would make room belong to other tenants
within their quota (`over_quota`), or to other tenants at all (`never`)."""


def over_quota(
    reservations: Mapping[str, Reservation], quotas: Mapping[str, Resources]
) -> dict[str, frozenset[Dimension]]:
    """Per tenant with a quota, the dimensions (CPU, memory, workers) in
    which its live allocations (`reservations`: their workers; a shared MCP
    server instance counts against no tenant) hold more than the quota;
    tenants within their quota are left out."""
    held: dict[str, Resources] = {}
    for reservation in reservations.values():
        tenant = reservation.tenant
        if tenant is not None and tenant in quotas:
            held[tenant] = held.get(tenant, Resources()) + reservation.resources
    over: dict[str, frozenset[Dimension]] = {}
    for tenant, amount in held.items():
        limit = quotas[tenant]
        dimensions = frozenset(d for d in AMOUNTS if amount.amount(d) > limit.amount(d))
        if dimensions:
            over[tenant] = dimensions
    return over


@dataclass(frozen=True)
class CrossTenantRule:
    """Which allocations a request of `tenant` may preempt as far as tenants
    go (priorities are checked apart, by `Scheduling.may_preempt`).

    Built once per decision by `cross_tenant_rule`; `over`: the tenants over
    their quota at that moment, with the dimensions they are over in.
    """

    setting: CrossTenantPreemption
    tenant: str | None
    over: Mapping[str, frozenset[Dimension]]

    def allows(self, reservation: Reservation) -> bool:
        """Whether `reservation` may be preempted by the request."""
        if reservation.tenant == self.tenant:
            return True
        if self.setting is CrossTenantPreemption.ANY:
            return True
        if self.setting is CrossTenantPreemption.NEVER or reservation.tenant is None:
            return False
        dimensions = self.over.get(reservation.tenant, frozenset())
        return any(reservation.resources.amount(d) > 0 for d in dimensions)

    @property
    def refusal_note(self) -> str | None:
        """What a refusal says when only this rule kept preemption from
        helping (WITHIN_QUOTA or NOT_ACROSS_TENANTS); None under `any`."""
        if self.setting is CrossTenantPreemption.OVER_QUOTA:
            return WITHIN_QUOTA
        if self.setting is CrossTenantPreemption.NEVER:
            return NOT_ACROSS_TENANTS
        return None


def cross_tenant_rule(pool: PoolState, tenant: str | None) -> CrossTenantRule:
    """The rule for a request of `tenant` in `pool` as it is now (which
    tenants are over their quota is worked out here, once)."""
    setting = pool.scheduling.cross_tenant_preemption
    over = (
        over_quota(pool.reservations, pool.quotas)
        if setting is CrossTenantPreemption.OVER_QUOTA
        else {}
    )
    return CrossTenantRule(setting, tenant, over)
