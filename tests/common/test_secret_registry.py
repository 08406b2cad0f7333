"""The redactor's set of known secrets (services/common/logs.py): registering one is cheap,
however many and however long the others, and redaction stays complete.

Each new caller key once recompiled one regex alternation over every known secret: ~0.2 s
of the event loop with the set full of 1 KiB keys, per new key. bench/redaction.py measures
both costs; here, what a test can see without a clock: no pattern is compiled."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import logs
from services.common.logs import REDACTED, hide_in_this_call, redact, register_secret


@contextmanager
def own_secrets() -> Iterator[None]:
    """The redactor's secrets as they were before, afterwards: what a test registers (some
    of it short and common) must not redact another test's text."""
    pinned, known = set(logs._pinned), logs._known
    call = logs._call_secrets.set(None)  # this test's own call, holding no key yet
    try:
        yield
    finally:
        logs._call_secrets.reset(call)
        logs._pinned.clear()
        logs._pinned.update(pinned)
        logs._known = known


def test_hiding_a_new_key_in_a_call_holding_many_compiles_no_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = [f"sk-full-{i:04d}-" + "k" * 1010 for i in range(301)]
    compiled: list[str] = []
    compile_: Callable[..., re.Pattern[str]] = re.compile

    def spy(pattern: Any, flags: int = 0) -> re.Pattern[str]:
        compiled.append(str(pattern)[:40])
        return compile_(pattern, flags)

    with own_secrets():
        for key in keys[:-1]:
            hide_in_this_call(key)
        monkeypatch.setattr(re, "compile", spy)
        hide_in_this_call(keys[-1])
        monkeypatch.undo()
        assert compiled == []
        # ... and the new key is hidden at once, none of the others let go.
        assert redact(f"with {keys[-1]}.") == f"with {REDACTED}."
        assert redact(f"with {keys[0]}.") == f"with {REDACTED}."
        # Every one of them, in one line.
        assert redact(" ".join(keys)) == " ".join([REDACTED] * len(keys))


def test_a_call_holds_every_key_it_was_given_and_no_copy_of_a_pinned_one() -> None:
    """No bound evicts a call's key: a call's keys are its own (its metadata bounds how
    many), so no other caller's keys can push one out while it runs."""
    with own_secrets():
        register_secret("pinned-config-secret-0002")
        keys = [f"caller-key-{i:06d}" for i in range(300)]
        for key in keys:
            hide_in_this_call(key)
        held = logs._call_secrets.get()
        hide_in_this_call(keys[0])  # sent again: held once
        # Internal views, where no line shows the difference: a key held twice, or a copy
        # of a configuration secret (hidden everywhere already), would hide nothing more
        # but be searched for again in each of the call's lines. Nothing was added.
        assert logs._call_secrets.get() is held
        assert redact(" ".join(keys)) == " ".join([REDACTED] * len(keys))
        assert redact("x pinned-config-secret-0002 y") == f"x {REDACTED} y"
        hide_in_this_call("pinned-config-secret-0002")
        assert logs._call_secrets.get() is held
        # One registered after the call got its keys is hidden in it too.
        register_secret("pinned-config-secret-0003")
        assert redact("x pinned-config-secret-0003") == f"x {REDACTED}"


def test_a_secret_holding_another_is_hidden_whole() -> None:
    with own_secrets():
        hide_in_this_call("abc.d*ef")
        hide_in_this_call("x(abc.d*ef)+y")
        hide_in_this_call("d*ef)+y|z")
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
            hide_in_this_call(secret)
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
        hide_in_this_call(key)
        long_text = "%61" * 1024 + " then " + block * 8
        assert redact(long_text) == REDACTED
        short_key = "pw-" + "b" * 29
        hide_in_this_call(short_key)
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
            (register_secret if pinned else hide_in_this_call)(secret)
        # Where the marker stands, nothing of the text is shown: a NUL (in no secret).
        shown = redact(text).replace(REDACTED, "\0")
    for secret in secrets:
        assert secret not in shown, (secret, text, shown)
    for spelled in quoted:
        assert spelled not in shown, (spelled, text, shown)
