"""An allocation's ids: its public id, its aggregate id, its workers' ids.

The public id is `alloc-` + 12 lowercase hex characters (design contract,
"Aggregates"): random, or derived from `(pool, tenant, request_id)` when the
client gives a request id, which makes requests idempotent within a tenant
while two tenants' equal request ids name two allocations. The aggregate UUID
is derived from the public id (uuid5), so no lookup table is needed.

Ledgers written before request ids belonged to tenants derived the id from
`(pool, request_id)` alone (`pre_tenant_allocation_id`); those allocations
keep their ids, and a retry finds them there when their tenant is the
retrying one (`RequestCommands.request`).
"""

from __future__ import annotations

import hashlib
import json
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

ALLOCATION_ID_PREFIX = "alloc-"


def allocation_uuid(allocation_id: str) -> UUID:
    """The aggregate id is derived from the public id: no lookup table needed."""
    return uuid5(NAMESPACE_URL, f"allocation-ledger:allocation:{allocation_id}")


_UUID5_PREFIX = NAMESPACE_URL.bytes + b"allocation-ledger:allocation:"


def allocation_uuid_hex(allocation_id: str) -> str:
    """`allocation_uuid(allocation_id).hex`, computed without a UUID object
    (read-model rows are keyed by it: a rebuild writes hundreds of
    thousands). The same SHA-1 as uuid5, with its version and variant bits."""
    digest = bytearray(hashlib.sha1(_UUID5_PREFIX + allocation_id.encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    return digest[:16].hex()


def allocation_id_for_request(
    pool: str, request_id: str, tenant: str | None = None
) -> str:
    """Retries with the same (pool, tenant, request_id) name the same
    allocation; another tenant (or none) with the same request id names
    another. Never one that `pre_tenant_allocation_id` gives (what is hashed
    starts with "[" here, with a pool name there)."""
    key = json.dumps([pool, tenant, request_id])
    digest = hashlib.sha256(key.encode()).hexdigest()
    return ALLOCATION_ID_PREFIX + digest[:12]


def pre_tenant_allocation_id(pool: str, request_id: str) -> str:
    """The id a ledger before tenants gave a request with this request id,
    whatever its tenant: only looked up, never given to a new allocation."""
    digest = hashlib.sha256(f"{pool}\x00{request_id}".encode()).hexdigest()
    return ALLOCATION_ID_PREFIX + digest[:12]


def random_allocation_id() -> str:
    """A new public id for a request without a request id."""
    return ALLOCATION_ID_PREFIX + uuid4().hex[:12]


def is_allocation_id(value: str) -> bool:
    """Whether `value` has the shape of a public allocation id."""
    suffix = value[len(ALLOCATION_ID_PREFIX) :]
    return (
        value.startswith(ALLOCATION_ID_PREFIX)
        and len(suffix) == 12
        and all(c in "0123456789abcdef" for c in suffix)
    )


def worker_id(allocation_id: str, index: int) -> str:
    """The id of an allocation's `index`-th worker (from 0): never collides."""
    return f"{allocation_id}-worker-{index}"
