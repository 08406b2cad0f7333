"""A caller's key for an upstream (x-<provider>-api-key) is kept out of the logs
(logs.register_secret) only once its call authenticated. Registered before the credential
check, every unauthenticated call with a new such header made the redactor recompile its
pattern of up to MAX_TRANSIENT_SECRETS keys: ~0.4 s of the event loop per call with 4 KB
keys, for anyone, and the real callers' keys pushed out of it."""

from __future__ import annotations

import pytest

from services.common import logs
from services.common.auth import Authenticator, Identity, Role
from services.common.errors import Unauthenticated

KEY = "sk-good-0123456789abcdef"


def authenticator() -> Authenticator:
    return Authenticator({KEY: Identity("alice", "acme", Role.READER)}, "")


@pytest.mark.parametrize(
    "credentials",
    (
        (),
        (("authorization", "Bearer sk-wrong-0123456789abcdef"),),
        (("authorization", "sk-no-scheme-0123456789"),),
    ),
)
def test_an_unauthenticated_call_registers_no_caller_key(
    credentials: tuple[tuple[str, str], ...],
) -> None:
    upstream = "sk-upstream-unauthenticated-0123456789"
    with pytest.raises(Unauthenticated):
        authenticator().authenticate((*credentials, ("x-openai-api-key", upstream)))
    assert upstream not in logs._transient


def test_an_authenticated_call_s_caller_key_is_never_logged() -> None:
    upstream = "sk-upstream-authenticated-0123456789"
    identity = authenticator().authenticate(
        (("authorization", f"Bearer {KEY}"), ("x-openai-api-key", upstream))
    )
    assert identity.user == "alice"
    assert upstream in logs._transient
    assert upstream not in logs.redact(f"key {upstream}")
