"""Who is calling, as the downstream services must see it.

Every downstream call carries the caller's identity (user, tenant, role); generation calls
also carry the caller's provider keys (``x-<provider>-api-key``) unchanged. Those keys are
never logged nor stored: the chassis hides each from the log lines, errors and spans of
the call that carries it (``services/common/auth.py``, ``logs.hide_in_this_call``).
Retrieval calls also carry the base URLs the caller names for its embedding and rerank
keys (``x-embedding-base-url``, ``x-rerank-base-url``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from services.common.auth import (
    CALLER_KEY_HEADER,
    ROLE_HEADER,
    TENANT_HEADER,
    TOKEN_HEADER,
    USER_HEADER,
    Identity,
    check_header_text,
    current_identity,
    forwarded_identity,
)
from services.common.egress import EMBEDDING_URL_HEADER, RERANK_URL_HEADER

Metadata = tuple[tuple[str, str], ...]


_OURS = (TOKEN_HEADER, USER_HEADER, TENANT_HEADER, ROLE_HEADER)


@dataclass(frozen=True)
class Caller:
    who: Identity
    identity: Metadata
    provider_keys: Metadata = ()
    # The base URLs the caller names for its embedding and rerank keys.
    key_destinations: Metadata = ()

    @property
    def user(self) -> str:
        return self.who.user

    @property
    def tenant(self) -> str:
        return self.who.tenant


def caller_from(
    who: Identity, incoming: Iterable[tuple[str, str | bytes]] | None, internal_token: str
) -> Caller:
    """With an internal token the gateway vouches for ``who``; without one it passes the
    caller's own credentials on, so each service authenticates them itself."""
    headers: list[tuple[str, str]] = []
    for key, value in incoming or ():
        if isinstance(value, str):
            headers.append((key.lower(), value))
    if internal_token:
        identity: Metadata = forwarded_identity(who, internal_token)
    else:
        identity = tuple((k, v) for k, v in headers if k == "authorization")
    keys = tuple((k, v) for k, v in headers if CALLER_KEY_HEADER.fullmatch(k) and k not in _OURS)
    destinations = tuple(
        (k, v) for k, v in headers if k in (EMBEDDING_URL_HEADER, RERANK_URL_HEADER)
    )
    for k, v in destinations:
        # Passed on with every retrieval call: gRPC would refuse to send it (INTERNAL).
        check_header_text(k, v, "URL", reason="MALFORMED_URL")
    return Caller(who=who, identity=identity, provider_keys=keys, key_destinations=destinations)


def caller_of(context: grpc.aio.ServicerContext, internal_token: str) -> Caller:
    """The caller of the RPC being served (the chassis has authenticated it)."""
    return caller_from(current_identity(), context.invocation_metadata(), internal_token)
