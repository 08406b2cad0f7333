"""The headers the gateway sends a service for the caller it authenticated
(services/common/auth.py, forwarded_identity). Spelled out here, not taken from auth.py,
so a test that poses as the gateway runs on code from before tenants too (and fails
there)."""

from __future__ import annotations

Metadata = tuple[tuple[str, str], ...]


def forwarded(token: str, user: str, tenant: str, role: str) -> Metadata:
    """``user`` of ``tenant`` in ``role``, as forwarded with the internal ``token``."""
    return (
        ("x-gensearch-internal-token", token),
        ("x-gensearch-user", user),
        ("x-gensearch-tenant", tenant),
        ("x-gensearch-role", role),
    )
