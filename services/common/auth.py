"""Caller identity: a user in a tenant, with a role.

Two ways in:

* a client sends ``authorization: Bearer <key>``; the configured keys
  (``GENSEARCH_API_KEYS`` and/or ``GENSEARCH_API_KEYS_FILE``, parsed in ``api_keys.py``)
  map the key to an ``Identity``. With no keys configured every caller is ``anonymous``,
  admin of the tenant ``default`` -- unless the service takes forwarded identities and
  has an internal token (below): its one legitimate caller is then the gateway, and a call
  without the token is UNAUTHENTICATED, reason ``MISSING_INTERNAL_TOKEN``. An operator who
  gives the keys to the gateway alone so leaves no backend open to a direct caller.
* a trusted peer (the gateway) sends ``x-gensearch-internal-token: <GENSEARCH_INTERNAL_TOKEN>``
  with ``x-gensearch-user``, ``x-gensearch-tenant`` and ``x-gensearch-role``: it has already
  authenticated the caller and forwards who it is. Without a configured internal token
  those headers are never believed.

A credential header sent more than once (two ``authorization`` headers, say, or two
``x-gensearch-user``) is refused, UNAUTHENTICATED with reason ``AMBIGUOUS_CREDENTIALS``:
which one counts would otherwise be up to the order headers arrive in (the last won). So
is a caller's key for an upstream (``x-<provider>-api-key``, ``x-embedding-api-key``,
``x-rerank-api-key``) sent twice: the first went upstream, the other was ignored.

Roles are ordered, each including the ones below it: ``admin`` (create, update, delete
collections) ⊃ ``writer`` (import, upsert, delete objects) ⊃ ``reader`` (search,
generative search, ask, its own conversations). A service checks the role an RPC needs
with ``require_role``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field

from services.common.ascii_text import OUTSIDE_PRINTABLE, check_ascii
from services.common.errors import InvalidArgument, PermissionDenied, Unauthenticated, over_limit
from services.common.logs import hide_in_this_call

ANONYMOUS = "anonymous"
DEFAULT_TENANT = "default"
USER_HEADER = "x-gensearch-user"
TENANT_HEADER = "x-gensearch-tenant"
ROLE_HEADER = "x-gensearch-role"
TOKEN_HEADER = "x-gensearch-internal-token"
AUTHORIZATION = "authorization"
FORWARDED_HEADERS = frozenset({TOKEN_HEADER, USER_HEADER, TENANT_HEADER, ROLE_HEADER})
# A key a caller sends for an upstream (x-openai-api-key, x-embedding-api-key, ...): at most
# once too, or which one went upstream would be up to header order (the first won). A
# provider's name may hold '_' (model_names.PROVIDER_NAME), so its header may too.
CALLER_KEY_HEADER = re.compile(r"x-[a-z0-9][a-z0-9_-]*-api-key")
# The longest caller key taken by default (GENSEARCH_<SERVICE>_MAX_CALLER_KEY_BYTES): real
# provider keys are under 300 bytes. The log redactor looks for each of a call's keys in
# every log line of that call longer than it: time that grows with their length.
DEFAULT_MAX_CALLER_KEY_BYTES = 1024
MAX_NAME_LEN = 256
# Printable ASCII, no control characters: user and tenant names travel in gRPC metadata
# and in logs, and "\0" separates tenant from user where both are hashed together. Stores
# never use a tenant name as is (they hash it), so no other character is special.
_NAME_CHARS = re.compile(r"[\x20-\x7e]+")


def check_header_text(header: str, value: str, what: str, *, reason: str) -> None:
    """INVALID_ARGUMENT naming ``header`` and the position of the first character of
    ``value`` outside printable ASCII (never quoting the value: it may be a key), if any.
    A service passes such headers on, and gRPC sends no other character in a header that
    is not -bin (nor does an HTTP header value carry one as it is)."""

    def says(_: str, position: int) -> str:
        return (
            f"the header {header!r} carries a {what} with a character that is not printable "
            f"ASCII (a control character or non-ASCII) at position {position}; a "
            f"{what} is printable ASCII"
        )

    check_ascii(value, OUTSIDE_PRINTABLE, header, says, reason=reason)


class Role(enum.StrEnum):
    """Declared from least to most: a role may do everything the roles before it may."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"

    def includes(self, other: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(other)


@dataclass(frozen=True)
class Identity:
    user: str
    tenant: str
    role: Role
    # Authenticated by an API key (a client), not asserted by a peer service holding the
    # internal token nor open (no keys configured). Not part of who the caller is.
    client_key: bool = field(default=False, compare=False)
    # Asserted by a peer service holding the internal token (the gateway calling on a
    # client's behalf). Not part of who the caller is.
    forwarded: bool = field(default=False, compare=False)


def _check_name(value: str, what: str) -> str | None:
    if not value or len(value) > MAX_NAME_LEN:
        return f"a {what} name must be 1..{MAX_NAME_LEN} characters"
    if not _NAME_CHARS.fullmatch(value) or value != value.strip():
        return f"a {what} name must be printable ASCII without surrounding spaces"
    return None


def check_user(user: str) -> str | None:
    """Why ``user`` is not a valid user name, or None."""
    return _check_name(user, "user")


def check_tenant(tenant: str) -> str | None:
    """Why ``tenant`` is not a valid tenant name, or None."""
    return _check_name(tenant, "tenant")


def parse_role(value: str) -> Role | None:
    try:
        return Role(value)
    except ValueError:
        return None


OPEN_IDENTITY = Identity(ANONYMOUS, DEFAULT_TENANT, Role.ADMIN)

_current: ContextVar[Identity] = ContextVar("gensearch_identity", default=OPEN_IDENTITY)


def current_identity() -> Identity:
    """The authenticated caller of the RPC being served."""
    return _current.get()


def current_user() -> str:
    return _current.get().user


def current_tenant() -> str:
    """The tenant of the RPC being served (what quotas and storage are keyed by)."""
    return _current.get().tenant


def set_current_identity(identity: Identity) -> None:
    _current.set(identity)


def require_service_caller() -> Identity:
    """The current identity, unless a client called with its API key: PERMISSION_DENIED
    for the methods only our services call (the semantic answer cache), which a client
    could otherwise poison with answers of its own."""
    identity = _current.get()
    if identity.client_key:
        raise PermissionDenied(
            "this method is internal to the services: only a peer service holding the "
            "internal token may call it, never an API key",
            reason="INTERNAL_METHOD",
        )
    return identity


def require_role(role: Role) -> Identity:
    """The current identity, if its role includes ``role``; PERMISSION_DENIED naming the
    role needed otherwise."""
    identity = _current.get()
    if not identity.role.includes(role):
        raise PermissionDenied(
            f"this call needs the role {role.value!r} (or higher); "
            f"the caller has {identity.role.value!r}",
            reason="ROLE_REQUIRED",
            metadata={"required_role": role.value, "role": identity.role.value},
        )
    return identity


class Authenticator:
    def __init__(
        self,
        api_keys: Mapping[str, Identity],
        internal_token: str,
        *,
        accept_forwarded: bool = True,
        max_caller_key_bytes: int = DEFAULT_MAX_CALLER_KEY_BYTES,
        caller_key_setting: str = "GENSEARCH_<SERVICE>_MAX_CALLER_KEY_BYTES",
    ) -> None:
        """``max_caller_key_bytes``: the longest ``x-*-api-key`` value an authenticated
        call may carry; ``caller_key_setting``: the variable that sets it, named in the
        refusal."""
        self._max_caller_key_bytes = max_caller_key_bytes
        self._caller_key_setting = caller_key_setting
        # By the SHA-256 of each key: one dict lookup per call whatever the number of keys
        # (a linear compare_digest over 100,000 keys cost ~13 ms of the event loop per bad
        # key), and no key kept in memory as it was sent. A lookup's timing can only tell
        # something about a hash, never about a key.
        self._keys = {_digest(key): identity for key, identity in api_keys.items()}
        # The public front door (the gateway) never takes an identity from its callers'
        # headers: it is the one that forwards identities, not one that receives them.
        self._token = internal_token.encode() if accept_forwarded else b""
        self._accept_forwarded = accept_forwarded
        # The headers this authenticator reads: each may come once.
        self._credentials = frozenset(
            ({AUTHORIZATION} if self._keys else set())
            | (FORWARDED_HEADERS if accept_forwarded else set())
        )

    @property
    def open(self) -> bool:
        """True when every caller without credentials is served, as ``anonymous``: no API
        keys configured, and no internal token either where forwarded identities are
        taken (with a token, only the peer holding it may call)."""
        return not self._keys and not self._token

    @property
    def tenants(self) -> frozenset[str] | None:
        """Every tenant a call may be served as, when this server knows them: its keys'
        tenants, or ``default`` alone when it is open. None when it takes identities
        forwarded by a peer holding the internal token (any tenant may come)."""
        if self._token:
            return None
        if not self._keys:
            return frozenset({DEFAULT_TENANT})
        return frozenset(identity.tenant for identity in self._keys.values())

    def open_warning(self) -> str | None:
        """What to log at start when this server is open, naming the settings that close
        it; None when it is not."""
        if not self.open:
            return None
        closing = "set GENSEARCH_API_KEYS or GENSEARCH_API_KEYS_FILE"
        if self._accept_forwarded:
            closing += ", or GENSEARCH_INTERNAL_TOKEN (the gateway's, to take calls from it alone)"
        return (
            "no API keys configured: every caller is served as 'anonymous', admin of the "
            f"tenant 'default'; {closing}"
        )

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Identity:
        headers: dict[str, str] = {}
        for key, value in metadata or ():
            if isinstance(value, str):
                key = key.lower()
                if key in headers and (
                    key in self._credentials or CALLER_KEY_HEADER.fullmatch(key)
                ):
                    raise Unauthenticated(
                        f"the header {key!r} was sent more than once; send one credential",
                        field=key,
                        reason="AMBIGUOUS_CREDENTIALS",
                    )
                headers[key] = value
        identity = self._identify(headers)
        keys = [(k, v.strip()) for k, v in headers.items() if CALLER_KEY_HEADER.fullmatch(k)]
        for key, value in keys:
            self._check_caller_key(key, value)
        for _, value in keys:
            # Hidden in every service a key passes through (the gateway holds them all;
            # alone in its process its redactor would know none), in this call's log
            # lines, errors and spans only (its context, which the tasks it starts copy):
            # a caller's header hides nothing from another call's lines, however many
            # keys it sends, nor can it push another call's key out of anything.
            hide_in_this_call(value)
        return identity

    def _check_caller_key(self, header: str, value: str) -> None:
        """INVALID_ARGUMENT naming ``header`` (never quoting its value) when the key is
        longer than the bound, or holds a character no HTTP header may carry as it is."""
        # Sent on as it was, such a key failed the gateway's own call to the service
        # behind it (INTERNAL: gRPC refuses to send the header) or reached the provider's
        # HTTP server, whose 400 was reported as the provider's fault.
        check_header_text(header, value, "key", reason="MALFORMED_CALLER_KEY")
        size = len(value.encode())
        if size > self._max_caller_key_bytes:
            raise over_limit(
                InvalidArgument,
                f"the header {header!r} carries a key of {size} bytes; this service takes "
                f"at most {self._max_caller_key_bytes} ({self._caller_key_setting})",
                field=header,
                size=size,
                limit=self._max_caller_key_bytes,
                setting=self._caller_key_setting,
            )

    def _identify(self, headers: Mapping[str, str]) -> Identity:
        token = headers.get(TOKEN_HEADER) if self._accept_forwarded else None
        if token is not None:
            if not self._token or not hmac.compare_digest(token.encode(), self._token):
                raise Unauthenticated(
                    f"invalid internal token: {TOKEN_HEADER!r} does not match this "
                    "service's GENSEARCH_INTERNAL_TOKEN",
                    field=TOKEN_HEADER,
                    reason="INVALID_INTERNAL_TOKEN",
                )
            return _forwarded(headers)
        if not self._keys:
            if self._token:
                # Forwarded identities with a token but no keys: the gateway holds the
                # keys, and nobody else may call this service (a key could not be checked).
                # The caller may be a gateway started without the token: its client gets
                # this message relayed, and "call the gateway" alone sent the operator
                # to what they had just done.
                raise Unauthenticated(
                    f"this service takes calls only from the gateway, with {TOKEN_HEADER!r} "
                    "(GENSEARCH_INTERNAL_TOKEN); it has no API keys configured "
                    "(GENSEARCH_API_KEYS, GENSEARCH_API_KEYS_FILE): call the gateway, "
                    "and give the gateway the same GENSEARCH_INTERNAL_TOKEN",
                    field=TOKEN_HEADER,
                    reason="MISSING_INTERNAL_TOKEN",
                )
            return OPEN_IDENTITY
        auth = headers.get(AUTHORIZATION, "").strip()
        if not auth:
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <api key>'",
                field=AUTHORIZATION,
                reason="MISSING_CREDENTIALS",
            )
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            # Never quote the value: a key sent without "Bearer " is the whole of it.
            raise Unauthenticated(
                "malformed authorization header: expected 'Bearer <api key>'",
                field=AUTHORIZATION,
                reason="MALFORMED_CREDENTIALS",
            )
        identity = self._keys.get(_digest(key.strip()))
        if identity is None:
            # The field is the header, never its value (the key).
            raise Unauthenticated(
                "invalid API key",
                field=AUTHORIZATION,
                reason="INVALID_API_KEY",
            )
        return identity


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _forwarded(headers: Mapping[str, str]) -> Identity:
    """The identity a trusted peer asserts; every part must be there and valid."""
    user = headers.get(USER_HEADER, "")
    tenant = headers.get(TENANT_HEADER, "")
    role = parse_role(headers.get(ROLE_HEADER, ""))
    if check_user(user) is not None:
        raise _bad_forward(USER_HEADER, "MISSING_FORWARDED_USER")
    if check_tenant(tenant) is not None:
        raise _bad_forward(TENANT_HEADER, "MISSING_FORWARDED_TENANT")
    if role is None:
        raise _bad_forward(ROLE_HEADER, "MISSING_FORWARDED_ROLE")
    return Identity(user, tenant, role, forwarded=True)


def _bad_forward(header: str, reason: str) -> Unauthenticated:
    return Unauthenticated(
        f"{header} must name the forwarded caller's {header.rsplit('-', 1)[-1]}",
        field=header,
        reason=reason,
    )


def forwarded_identity(identity: Identity, internal_token: str) -> tuple[tuple[str, str], ...]:
    """Metadata a trusted peer sends so the callee acts as ``identity``."""
    return (
        (TOKEN_HEADER, internal_token),
        (USER_HEADER, identity.user),
        (TENANT_HEADER, identity.tenant),
        (ROLE_HEADER, identity.role.value),
    )
