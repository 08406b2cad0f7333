"""Where a tenant's collection lives in the engine.

Layout: one Qdrant collection (server) or shard (qdrant-edge) per tenant collection. A
tenant's collections are few and each has its own schema, vector size and distance, which
Qdrant's payload-based multitenancy (one collection, an ``is_tenant`` payload index) cannot
mix; dropping a collection stays dropping a Qdrant collection, and no query can reach
another tenant's points, whatever its filter, because they are not in the collection it
names.

The engine name is derived, never taken as given: ``_t`` + sha256(tenant + "\\0" + name) in
hex, for every tenant, ``default`` included. It is the same length for every tenant, leaks
neither name, and cannot collide with a collection name (those start with a letter), with
another tenant's (the NUL byte cannot occur in a tenant or a collection name), with the
answer cache's hidden collections (``_a``) nor with anything else on a shared Qdrant server
(the memory service's interaction index, another application's collections): so a
CreateCollection can only ever collide with the caller's own collection, and its
ALREADY_EXISTS tells nothing about anyone else's names.

Compatibility: collections the default tenant made before derived names (their stored
schema lacks ``NAMING_KEY``) keep the collection's own name as their engine name, so data
written before tenants existed is the default tenant's, unchanged (``engine_name``).
"""

from __future__ import annotations

import hashlib

from services.common.auth import DEFAULT_TENANT

# A key beside the collection's fields in the stored schema JSON; a schema without it (one
# written before tenants existed) belongs to the default tenant.
TENANT_KEY = "gensearch_tenant"
# Written into every schema whose engine name is derived; a default tenant's schema without
# it was made when the default tenant kept its names as engine names.
NAMING_KEY = "gensearch_naming"
DERIVED = "derived"


def storage_name(tenant: str, name: str) -> str:
    """The engine's name for ``tenant``'s collection ``name``."""
    digest = hashlib.sha256(f"{tenant}\0{name}".encode()).hexdigest()
    return f"_t{digest}"


def engine_name(tenant: str, name: str, derived: bool) -> str:
    """Where a stored collection is: its derived name, or (a default tenant's collection
    from before derived names, ``derived`` False) its own name."""
    if derived or tenant != DEFAULT_TENANT:
        return storage_name(tenant, name)
    return name
