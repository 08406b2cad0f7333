"""The filter ``qdrant_server_client`` adds drops qdrant-client's "Failed to obtain server
version" warning only: it is process-wide (warnings.filters), so the same words warned by
another module are still shown. Before, it matched that message from any module."""

from __future__ import annotations

import threading
import warnings
from unittest import mock

from qdrant_client import async_qdrant_remote

from services.retrieval.server_client import UNREACHABLE_VERSION_WARNING, qdrant_server_client

# Nothing listens there: the client's version check fails at once, as with a server down.
UNREACHABLE = "http://127.0.0.1:9"


class _Recorded(threading.Thread):
    """qdrant-client's ``Thread``, each one started kept in ``started``."""

    started: list[threading.Thread] = []

    def start(self) -> None:
        _Recorded.started.append(self)
        super().start()


def _built_and_checked(url: str) -> None:
    """Builds a client of ``url`` and waits (bounded) for its version check to end: the
    check runs in a thread of its own, and warns from there. Without the wait the test
    looked before the thread had warned, so it passed with no filter at all, and the
    warning came after ``catch_warnings`` had restored the process' filters. The threads
    are recorded as they start: a check already ended is found too (looked for among the
    running threads, one ended at once on a busy machine was missed)."""
    _Recorded.started.clear()
    with mock.patch.object(async_qdrant_remote, "Thread", _Recorded):
        qdrant_server_client(url, None, 1)
    assert _Recorded.started, "the client started no version check: this test checks nothing"
    for thread in _Recorded.started:
        thread.join(30)  # a bound, not a timing: refused at once on loopback
        assert not thread.is_alive(), "the version check never ended"


def _warned_from(module: str) -> list[warnings.WarningMessage]:
    """What a UserWarning with the unreachable-version words, warned from ``module``, leaves
    once the filter is in (``catch_warnings`` restores the process' filters after)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _built_and_checked(UNREACHABLE)
        seen.clear()  # whatever building the client warned (nothing, if filtered)
        warnings.warn_explicit(
            f"{UNREACHABLE_VERSION_WARNING}. Unable to check client-server compatibility.",
            UserWarning,
            filename=f"{module.replace('.', '/')}.py",
            lineno=1,
            module=module,
        )
        return list(seen)


def test_qdrant_clients_own_warning_is_dropped() -> None:
    assert _warned_from("qdrant_client.async_qdrant_remote") == []
    assert _warned_from("qdrant_client.qdrant_remote") == []


def test_the_same_words_from_another_module_are_still_shown() -> None:
    seen = _warned_from("some_other_library.client")
    assert [str(w.message) for w in seen] == [
        f"{UNREACHABLE_VERSION_WARNING}. Unable to check client-server compatibility."
    ]


def test_building_a_client_of_an_unreachable_server_warns_nothing() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _built_and_checked(UNREACHABLE)
    assert [str(w.message) for w in seen if "server version" in str(w.message)] == []
