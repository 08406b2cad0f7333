"""Each service's bounds on the bytes it holds fit its container's memory limit, in every
overlay: a change to a setting or to a limit without the other fails here, not as an
OOM kill that fails every tenant's calls (docs/operations.md#process-memory)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from services.common.settings import CommonSettings
from tests.deploy.manifests import SERVICES, container, render, settings_class, workloads
from tests.deploy.test_manifests import ALL, _env, _quantity_bytes

MIB = 1024 * 1024
# What a replica holds besides calls' requests and replies: the interpreter, libraries,
# caches, connections and, in retrieval, the embedded engine. Idle RSS measured: gateway
# ~120 MiB, retrieval ~400 MiB (docs/operations.md#limits).
BASELINE_BYTES = {
    "gateway": 192 * MIB,
    "memory": 128 * MIB,
    "retrieval": 512 * MIB,
    "generation": 192 * MIB,
}
# A held message exists two to four times: the bytes gRPC holds and Python's (a request's
# parsed message, a reply's serialized copy), plus the allocator's and protobuf's
# transient copies. bench/rss.py measured a held request at 2-4 times its wire size
# (docs/benchmarks.md, process memory): the model takes the top of that.
COPIES = 4
# What one open client connection holds besides its calls' messages: ~17 KB measured idle
# (4000 idle HTTP/2 connections grew a server by 66 MiB); the model takes 24 KiB.
CONNECTION_BYTES = 24 * 1024


def worst_case_bytes(service: str, settings: CommonSettings) -> float:
    """The most a replica's memory reaches under its bounds: its baseline, the replies in
    flight (all tenants; one always goes, so at least the send limit) and the requests
    held (all calls; one always goes, so at least the largest request), each COPIES times,
    and its open connections (MAX_CONNECTIONS of them). A bound of 0 (none) is infinite."""

    def held(bound: int, single: int) -> float:
        return float("inf") if bound == 0 else max(bound, single)

    replies = held(settings.max_reply_bytes_in_flight, settings.max_message_bytes)
    requests = held(settings.max_request_bytes_in_flight, settings.largest_request())
    connections = held(settings.max_connections, 0) * CONNECTION_BYTES
    return BASELINE_BYTES[service] + COPIES * (replies + requests) + connections


def _limit(docs: Any, service: str) -> int:
    (workload,) = [w for w in workloads(docs) if w["metadata"]["name"] == service]
    return _quantity_bytes(container(workload)["resources"]["limits"]["memory"])


def _settings(path: str, service: str, monkeypatch: pytest.MonkeyPatch) -> CommonSettings:
    """The service's settings from exactly what its pod gets."""
    for key in list(os.environ):
        if key.startswith("GENSEARCH_"):
            monkeypatch.delenv(key)
    for key, value in _env(render(path)).items():
        monkeypatch.setenv(key, value)
    settings: CommonSettings = settings_class(service)()
    return settings


@pytest.mark.parametrize("path", ALL)
@pytest.mark.parametrize("service", list(SERVICES))
def test_held_bytes_fit_the_container_limit(
    path: str, service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(path, service, monkeypatch)
    limit = _limit(render(path), service)
    worst = worst_case_bytes(service, settings)
    assert worst <= limit, (
        f"{path} {service}: its bounds let it hold {worst / MIB:.0f} MiB, past its container "
        f"limit of {limit / MIB:.0f} MiB: lower {settings.namespace()}MAX_REPLY_BYTES_IN_FLIGHT "
        f"or MAX_REQUEST_BYTES_IN_FLIGHT, or raise the limit"
    )


def test_the_check_would_catch_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings("base", "memory", monkeypatch)
    limit = _limit(render("base"), "memory")
    assert worst_case_bytes("memory", settings) <= limit
    for change in (
        {"max_reply_bytes_in_flight": 0},  # no bound
        {"max_request_bytes_in_flight": 0},
        {"max_reply_bytes_in_flight": 4 * settings.max_reply_bytes_in_flight},
        {"request_limits": {"CreateInteraction": 512 * MIB}},  # one request alone
        {"max_connections": 0},  # connections without bound
    ):
        assert worst_case_bytes("memory", settings.validated_copy(**change)) > limit, change
