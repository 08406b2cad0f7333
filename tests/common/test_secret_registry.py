"""The redactor's set of known secrets (services/common/logs.py): registering one is cheap,
however many and however long the others, and redaction stays complete.

Each new caller key once recompiled one regex alternation over every known secret: ~0.2 s
of the event loop with the set full of 1 KiB keys, per new key. bench/redaction.py measures
both costs; here, what a test can see without a clock: no pattern is compiled."""

from __future__ import annotations

import json
import re
import string
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import logs
from services.common.logs import REDACTED, redact, register_secret


@contextmanager
def own_secrets() -> Iterator[None]:
    """The redactor's secrets as they were before, afterwards: what a test registers (some
    of it short and common) must not redact another test's text."""
    pinned, transient, known = set(logs._pinned), OrderedDict(logs._transient), logs._known
    try:
        yield
    finally:
        logs._pinned.clear()
        logs._pinned.update(pinned)
        logs._transient.clear()
        logs._transient.update(transient)
        logs._known = known


def test_registering_a_new_key_into_a_full_set_compiles_no_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"sk-full-{i:04d}-" + "k" * 1010 for i in range(logs.MAX_TRANSIENT_SECRETS + 1)]
    compiled: list[str] = []
    compile_: Callable[..., re.Pattern[str]] = re.compile

    def spy(pattern: Any, flags: int = 0) -> re.Pattern[str]:
        compiled.append(str(pattern)[:40])
        return compile_(pattern, flags)

    with own_secrets():
        for key in keys[:-1]:
            register_secret(key, transient=True)
        monkeypatch.setattr(re, "compile", spy)
        register_secret(keys[-1], transient=True)
        monkeypatch.undo()
        assert compiled == []
        # ... and the new key is hidden at once, the oldest evicted.
        assert redact(f"with {keys[-1]}.") == f"with {REDACTED}."
        assert keys[0] not in logs._transient and len(logs._transient) == len(keys) - 1


def test_the_bound_evicts_the_least_recently_registered_key() -> None:
    with own_secrets():
        register_secret("pinned-config-secret-0002")
        keys = [f"caller-key-{i:06d}" for i in range(logs.MAX_TRANSIENT_SECRETS)]
        for key in keys:
            register_secret(key, transient=True)
        register_secret(keys[0], transient=True)  # used again: now the most recent
        register_secret("caller-key-newest", transient=True)
        assert len(logs._transient) == logs.MAX_TRANSIENT_SECRETS
        # The least recently used went, and is no longer redacted (nor held anywhere).
        assert redact(f"x {keys[1]} y") == f"x {keys[1]} y"
        for key in (keys[0], keys[2], keys[-1], "caller-key-newest"):
            assert redact(f"x {key} y") == f"x {REDACTED} y", key
        # A configuration secret is never evicted, nor a transient copy of it kept.
        register_secret("pinned-config-secret-0002", transient=True)
        assert "pinned-config-secret-0002" not in logs._transient
        assert redact("pinned-config-secret-0002") == REDACTED


def test_a_secret_holding_another_is_hidden_whole() -> None:
    with own_secrets():
        register_secret("abc.d*ef", transient=True)
        register_secret("x(abc.d*ef)+y", transient=True)
        register_secret("d*ef)+y|z", transient=True)
        assert redact("1 x(abc.d*ef)+y 2 abc.d*ef 3") == f"1 {REDACTED} 2 {REDACTED} 3"
        assert redact("d*ef)+y|z and abcXd*ef") == f"{REDACTED} and abcXd*ef"


def test_a_secret_a_further_decoding_would_change_is_still_found() -> None:
    """The echo was decoded (up to three rounds) before the secrets were looked for: a key
    holding a backslash escape or a percent-escape of its own, quoted escaped once, was
    changed past recognition by the second round, and shown (found by the property below)."""
    with own_secrets():
        for secret, spelled in (
            ("key\\0-0123456789", json.dumps("key\\0-0123456789")[1:-1]),
            ("pass%41word-0123", quote("pass%41word-0123", safe="")),
            ("pw&amp;0123456789", "".join(f"&#{ord(c)};" for c in "pw&amp;0123456789")),
        ):
            register_secret(secret, transient=True)
            assert redact(f"upstream said: {spelled}!") == f"upstream said: {REDACTED}!"


def test_a_long_text_holding_a_secret_in_another_spelling_is_not_shown() -> None:
    """Finding a secret's other spellings in place tries every start of the text as far as
    the secret: a caller's own 1 KB key of one repeated character, quoted percent-encoded
    in a long upstream error (the caller's endpoint writes both), took the event loop
    seconds per 100 KB, quadratic in the text. Past MAX_SPELLING_WORK the text is not shown
    at all, as one holding a spelling the redactor cannot undo; a short one keeps the rest."""
    key = "a" * 1024
    block = "%61" * 1023 + "X"
    with own_secrets():
        register_secret(key, transient=True)
        long_text = "%61" * 1024 + " then " + block * 8
        assert redact(long_text) == REDACTED
        short_key = "pw-" + "b" * 29
        register_secret(short_key, transient=True)
        spelled = quote(short_key, safe="").replace("b", "%62")
        assert redact(f"said {spelled} and more") == f"said {REDACTED} and more"


# Secrets: printable, regex metacharacters included; keys and passwords have no blanks at
# their ends (auth strips them), so none here: a line break beside one may be removed.
SECRET_CHARS = "".join(c for c in string.printable if not c.isspace()) + " "
FILLER_CHARS = string.printable.replace("\x0b", "").replace("\x0c", "")


def _spellings(secret: str) -> list[str]:
    """``secret`` as an echo may quote it, in the spellings the redactor undoes (for
    secrets of ``MIN_ENCODED_SECRET`` characters or more)."""
    if len(secret) < logs.MIN_ENCODED_SECRET:
        return [secret]
    return [
        secret,
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        "".join(f"\\u{ord(c):04x}" for c in secret),
        "".join(f"\\x{ord(c):02X}" for c in secret),
        quote(secret, safe=""),
        quote(quote(secret, safe=""), safe=""),
        "".join(f"&#{ord(c)};" for c in secret),
    ]


@st.composite
def secrets_and_text(draw: st.DrawFn) -> tuple[list[str], str, list[str]]:
    """Secrets (some a part of another, some overlapping another) and a text quoting each
    in some spelling between random filler, with the spellings quoted."""
    secret = st.text(SECRET_CHARS, min_size=4, max_size=40).map(str.strip)
    secrets = draw(st.lists(secret.filter(lambda s: len(s) >= 4), min_size=1, max_size=5))
    for base in list(secrets):
        start = draw(st.integers(0, len(base)))
        part = base[start : start + draw(st.integers(4, 40))].strip()
        if len(part) >= 4 and draw(st.booleans()):
            secrets.append(part)  # a part of another
        tail = base[-draw(st.integers(1, len(base))) :]
        overlapping = (tail + draw(st.text(SECRET_CHARS, max_size=12))).strip()
        if len(overlapping) >= 4 and draw(st.booleans()):
            secrets.append(overlapping)  # starts where another ends
    # No filler ends with a backslash: it would escape the backslash of a spelling.
    filler = st.text(FILLER_CHARS, max_size=30).map(lambda t: t.rstrip("\\"))
    quoted, parts = [], [draw(filler)]
    for s in draw(st.lists(st.sampled_from(secrets), min_size=1, max_size=6)):
        quoted.append(draw(st.sampled_from(_spellings(s))))
        parts += [quoted[-1], draw(filler)]
    return secrets, "".join(parts), quoted


@settings(max_examples=300, deadline=None)
@given(case=secrets_and_text(), pinned=st.booleans())
def test_no_registered_secret_survives_in_any_spelling(
    case: tuple[list[str], str, list[str]], pinned: bool
) -> None:
    secrets, text, quoted = case
    with own_secrets():
        for secret in secrets:
            register_secret(secret, transient=not pinned)
        # Where the marker stands, nothing of the text is shown: a NUL (in no secret).
        shown = redact(text).replace(REDACTED, "\0")
    for secret in secrets:
        assert secret not in shown, (secret, text, shown)
    for spelled in quoted:
        assert spelled not in shown, (spelled, text, shown)
