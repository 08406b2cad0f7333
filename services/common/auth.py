"""Caller identity.

Two ways in:

* a client sends ``authorization: Bearer <key>``; ``GENSEARCH_API_KEYS`` maps the key to a
  user. With no keys configured every caller is ``anonymous``.
* a trusted peer (the gateway) sends ``x-gensearch-internal-token: <GENSEARCH_INTERNAL_TOKEN>``
  and ``x-gensearch-user: <user>``: it has already authenticated the caller and forwards
  who it is. Without a configured internal token that header is never believed.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from contextvars import ContextVar

from services.common.errors import Unauthenticated

ANONYMOUS = "anonymous"
USER_HEADER = "x-gensearch-user"
TOKEN_HEADER = "x-gensearch-internal-token"
MAX_USER_LEN = 256

_current_user: ContextVar[str] = ContextVar("gensearch_user", default=ANONYMOUS)


def current_user() -> str:
    """The authenticated caller of the RPC being served."""
    return _current_user.get()


def set_current_user(user: str) -> None:
    _current_user.set(user)


class Authenticator:
    def __init__(
        self, api_keys: dict[str, str], internal_token: str, *, accept_forwarded: bool = True
    ) -> None:
        self._keys = api_keys
        # The public front door (the gateway) never takes an identity from its callers'
        # headers: it is the one that forwards identities, not one that receives them.
        self._token = internal_token.encode() if accept_forwarded else b""
        self._accept_forwarded = accept_forwarded

    @property
    def open(self) -> bool:
        """True when no API keys are configured (everyone is anonymous)."""
        return not self._keys

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        headers: dict[str, str] = {}
        for key, value in metadata or ():
            if isinstance(value, str):
                headers[key.lower()] = value
        token = headers.get(TOKEN_HEADER) if self._accept_forwarded else None
        if token is not None:
            if not self._token or not hmac.compare_digest(token.encode(), self._token):
                raise Unauthenticated("invalid internal token", reason="INVALID_INTERNAL_TOKEN")
            user = headers.get(USER_HEADER, "").strip()
            if not user or len(user) > MAX_USER_LEN:
                raise Unauthenticated(
                    f"{USER_HEADER} must name the forwarded user",
                    field=USER_HEADER,
                    reason="MISSING_FORWARDED_USER",
                )
            return user
        if self.open:
            return ANONYMOUS
        auth = headers.get("authorization", "")
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <api key>'",
                reason="MISSING_CREDENTIALS",
            )
        for known, user in self._keys.items():
            if hmac.compare_digest(key.strip().encode(), known.encode()):
                return user
        raise Unauthenticated("invalid API key", reason="INVALID_API_KEY")


def forwarded_identity(user: str, internal_token: str) -> tuple[tuple[str, str], ...]:
    """Metadata a trusted peer sends so the callee acts as ``user``."""
    return ((TOKEN_HEADER, internal_token), (USER_HEADER, user))
