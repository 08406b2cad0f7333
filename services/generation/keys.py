"""Provider API keys: a per-request key in gRPC metadata wins over the environment.

Every key we see is given to the log redactor before it is used, so it can never appear in
a log line: the environment's for every call, a caller's for its own call (the
authenticator hid it already); keys travel only in upstream request headers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from services.common.logs import hide_in_this_call, register_secret
from services.generation.settings import ProviderConfig, chosen_key

Metadata = Iterable[tuple[str, str | bytes]] | None


def env_key(config: ProviderConfig, environ: Mapping[str, str] | None = None) -> str | None:
    chosen = chosen_key(config, os.environ if environ is None else environ)
    if chosen is None:
        return None
    register_secret(chosen[1])
    return chosen[1]


def request_key(config: ProviderConfig, metadata: Metadata) -> str | None:
    header = config.key_header
    for key, value in metadata or ():
        if key.lower() == header and isinstance(value, str) and value.strip():
            hide_in_this_call(value.strip())
            return value.strip()
    return None


def resolve_key(
    config: ProviderConfig, metadata: Metadata, environ: Mapping[str, str] | None = None
) -> str | None:
    """``x-<provider>-api-key`` from the call, else the provider's environment variable."""
    return request_key(config, metadata) or env_key(config, environ)
