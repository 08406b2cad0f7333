"""A caller's key for an upstream (x-<provider>-api-key) is kept out of its call's logs
(logs.hide_in_this_call) only once its call authenticated. Registered before the credential
check (then in a process-wide list), every unauthenticated call with a new such header made
the redactor recompile its pattern of up to 256 keys: ~0.4 s of the event loop per call
with 4 KB keys, for anyone, and the real callers' keys pushed out of it."""

from __future__ import annotations

import contextvars

import pytest

from services.common import logs
from services.common.auth import Authenticator, Identity, Role
from services.common.errors import InvalidArgument, Unauthenticated
from services.common.settings import CommonSettings

KEY = "sk-good-0123456789abcdef"


def hidden_here(value: str) -> bool:
    """Whether this call's log lines hide ``value``: the caller keys below are shaped like
    no key (an ``sk-...`` is hidden everywhere by its shape), so only the call hides them."""
    line = f"upstream said {value} ."
    if logs.redact(line) == f"upstream said {logs.REDACTED} .":
        return True
    assert logs.redact(line) == line, "shaped like a key: hidden whatever the call holds"
    return False


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
    upstream = "upstream-unauthenticated-0123456789"
    with pytest.raises(Unauthenticated):
        authenticator().authenticate((*credentials, ("x-openai-api-key", upstream)))
    assert not hidden_here(upstream)


def test_an_authenticated_call_s_caller_key_is_never_logged() -> None:
    upstream = "upstream-authenticated-0123456789"
    identity = authenticator().authenticate(
        (("authorization", f"Bearer {KEY}"), ("x-openai-api-key", upstream))
    )
    assert identity.user == "alice"
    assert hidden_here(upstream)


def test_a_caller_key_past_the_bound_is_refused_unregistered() -> None:
    """Each new key recompiled the redactor in time growing with its length: a caller
    sending new 4 KB keys per call stalled the event loop ~0.4 s a call. The redactor now
    compiles nothing (test_secret_registry.py), but searches every log line for each key."""
    upstream = "up-" + "k" * 1022  # 1025 bytes, one past the default bound
    with pytest.raises(InvalidArgument) as raised:
        authenticator().authenticate(
            (("authorization", f"Bearer {KEY}"), ("x-openai-api-key", upstream))
        )
    err = raised.value
    assert err.field == "x-openai-api-key"
    assert "x-openai-api-key" in err.message and upstream[:40] not in err.message
    assert err.metadata["limit_bytes"] == "1024" and err.metadata["size_bytes"] == "1025"
    assert err.metadata["setting"] == "GENSEARCH_<SERVICE>_MAX_CALLER_KEY_BYTES"
    assert not hidden_here(upstream)


def test_the_bound_is_a_setting_named_in_the_refusal() -> None:
    auth = Authenticator(
        {KEY: Identity("alice", "acme", Role.READER)},
        "",
        max_caller_key_bytes=64,
        caller_key_setting="GENSEARCH_RETRIEVAL_MAX_CALLER_KEY_BYTES",
    )
    at_bound = "e" * 64
    auth.authenticate((("authorization", f"Bearer {KEY}"), ("x-embedding-api-key", at_bound)))
    assert hidden_here(at_bound)
    with pytest.raises(InvalidArgument) as raised:
        auth.authenticate((("authorization", f"Bearer {KEY}"), ("x-rerank-api-key", "r" * 65)))
    assert raised.value.metadata["setting"] == "GENSEARCH_RETRIEVAL_MAX_CALLER_KEY_BYTES"
    assert CommonSettings().max_caller_key_bytes == 1024


def test_a_key_hidden_already_in_the_call_changes_nothing() -> None:
    upstream = "upstream-again-0123456789"
    call = (("authorization", f"Bearer {KEY}"), ("x-openai-api-key", upstream))

    def twice() -> None:
        authenticator().authenticate(call)
        held = logs._call_secrets.get()
        authenticator().authenticate(call)
        # An internal view, the one place a test needs it: a key held twice would hide
        # nothing more (no line shows the difference), but would be searched for twice in
        # each of the call's lines. The call's keys are the same object: nothing added.
        assert logs._call_secrets.get() is held
        assert hidden_here(upstream)

    contextvars.copy_context().run(twice)
