"""Who is calling, as the downstream services must see it.

Every downstream call carries the caller's identity; generation calls also carry the
caller's provider keys (``x-<provider>-api-key``) unchanged. Those keys are never logged
nor stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

from services.common.auth import TOKEN_HEADER, USER_HEADER, current_user, forwarded_identity

API_KEY_HEADER = re.compile(r"^x-[a-z0-9][a-z0-9-]*-api-key$")
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Caller:
    user: str
    identity: Metadata
    provider_keys: Metadata = ()


def caller_from(
    user: str, incoming: Iterable[tuple[str, str | bytes]] | None, internal_token: str
) -> Caller:
    """With an internal token the gateway vouches for ``user``; without one it passes the
    caller's own credentials on, so each service authenticates them itself."""
    headers: list[tuple[str, str]] = []
    for key, value in incoming or ():
        if isinstance(value, str):
            headers.append((key.lower(), value))
    if internal_token:
        identity: Metadata = forwarded_identity(user, internal_token)
    else:
        identity = tuple((k, v) for k, v in headers if k == "authorization")
    keys = tuple(
        (k, v)
        for k, v in headers
        if API_KEY_HEADER.match(k) and k not in (TOKEN_HEADER, USER_HEADER)
    )
    return Caller(user=user, identity=identity, provider_keys=keys)


def caller_of(context: grpc.aio.ServicerContext, internal_token: str) -> Caller:
    """The caller of the RPC being served (the chassis has authenticated it)."""
    return caller_from(current_user(), context.invocation_metadata(), internal_token)
