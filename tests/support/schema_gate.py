"""Holds jsonschema's metaschema check of one marked schema until the test lets it go: how
a test sees that the check runs off the event loop (while it is held, other calls on the
same server are answered) without timing anything."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from services.common import json_schema

# The marked schema carries this title; every other schema is checked as usual.
HELD_TITLE = "held-by-the-test"
# A safety net only: the test releases the check as soon as it has seen what it waits for.
_MAX_HOLD_SECONDS = 120.0


@dataclass
class SchemaGate:
    loop_thread: int
    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    # Threads the marked schema's check ran on.
    threads: list[int] = field(default_factory=list)


def hold_schema_checks(monkeypatch: pytest.MonkeyPatch) -> SchemaGate:
    """Call from the test's coroutine (its thread is the servers' event loop's). On the
    loop thread the marked check is not held (that would stop the very loop that must
    release it): it is recorded and runs, and the test's assertion on ``threads`` fails."""
    gate = SchemaGate(loop_thread=threading.get_ident())
    check = Draft202012Validator.check_schema

    def held(schema: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        if schema.get("title") == HELD_TITLE:
            gate.threads.append(threading.get_ident())
            gate.entered.set()
            if threading.get_ident() != gate.loop_thread:
                gate.release.wait(_MAX_HOLD_SECONDS)
        check(schema, *args, **kwargs)

    monkeypatch.setattr(json_schema.Draft202012Validator, "check_schema", staticmethod(held))
    return gate
