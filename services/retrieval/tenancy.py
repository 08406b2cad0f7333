"""Where a tenant's collection lives in the engine.

Layout: one Qdrant collection (server) or shard (qdrant-edge) per tenant collection. A
tenant's collections are few and each has its own schema, vector size and distance, which
Qdrant's payload-based multitenancy (one collection, an ``is_tenant`` payload index) cannot
mix; dropping a collection stays dropping a Qdrant collection, and no query can reach
another tenant's points, whatever its filter, because they are not in the collection it
names.

The engine name is derived, never taken as given: ``_t`` + sha256(tenant + "\\0" + name) in
hex. It is the same length for every tenant, leaks neither name, and cannot collide with a
collection name (those start with a letter) nor with another tenant's (the NUL byte cannot
occur in a tenant or a collection name). The tenant ``default`` keeps the collection's own
name, so data written before tenants existed is the default tenant's, unchanged.
"""

from __future__ import annotations

import hashlib

from services.common.auth import DEFAULT_TENANT

# A key beside the collection's fields in the stored schema JSON; a schema without it (one
# written before tenants existed) belongs to the default tenant.
TENANT_KEY = "gensearch_tenant"


def storage_name(tenant: str, name: str) -> str:
    """The engine's name for ``tenant``'s collection ``name``."""
    if tenant == DEFAULT_TENANT:
        return name
    digest = hashlib.sha256(f"{tenant}\0{name}".encode()).hexdigest()
    return f"_t{digest}"
