"""The filter ``qdrant_server_client`` adds drops qdrant-client's "Failed to obtain server
version" warning only: it is process-wide (warnings.filters), so the same words warned by
another module are still shown. Before, it matched that message from any module."""

from __future__ import annotations

import warnings

from services.retrieval.server_client import UNREACHABLE_VERSION_WARNING, qdrant_server_client

# Nothing listens there: the client's version check fails at once, as with a server down.
UNREACHABLE = "http://127.0.0.1:9"


def _warned_from(module: str) -> list[warnings.WarningMessage]:
    """What a UserWarning with the unreachable-version words, warned from ``module``, leaves
    once the filter is in (``catch_warnings`` restores the process' filters after)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        qdrant_server_client(UNREACHABLE, None, 1)
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
        qdrant_server_client(UNREACHABLE, None, 1)
    assert [str(w.message) for w in seen if "server version" in str(w.message)] == []
