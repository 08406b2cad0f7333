"""The redactor's set of known secrets (services/common/logs.py): registering one is cheap,
however many and however long the others, and redaction stays complete.

Each new caller key once recompiled one regex alternation over every known secret: ~0.2 s
of the event loop with the set full of 1 KiB keys, per new key. bench/redaction.py measures
both costs; here, what a test can see without a clock: no pattern is compiled."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

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
