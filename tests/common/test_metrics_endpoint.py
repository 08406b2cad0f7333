"""The Prometheus endpoint (services/common/metrics.py) under connections that never ask."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

from services.common.metrics import METRICS_MAX_CONNECTIONS, serve_metrics


@contextlib.contextmanager
def _idle(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections to ``port`` that send nothing."""
    with contextlib.ExitStack() as stack:
        yield [
            stack.enter_context(socket.create_connection(("127.0.0.1", port))) for _ in range(count)
        ]


def _threads_settle(expected: int) -> int:
    for _ in range(600):  # 30 s at most: a loaded machine is slow, never wrong
        if threading.active_count() <= expected:
            break
        time.sleep(0.05)
    return threading.active_count()


def _closed_by_server(connections: list[socket.socket]) -> int:
    """How many of ``connections`` the server has closed (their read end reached)."""
    closed = 0
    for connection in connections:
        connection.setblocking(False)
        try:
            closed += connection.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            pass  # still open, nothing sent: a connection the server holds
        except ConnectionResetError:
            closed += 1
        finally:
            connection.setblocking(True)
    return closed


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        return bytes(reply.read())


def test_idle_connections_hold_at_most_the_cap_of_threads() -> None:
    # Each connection had a thread of its own, for as long as it stayed open: anyone who
    # could reach the port could pile up threads until the process could start none.
    port = serve_metrics("127.0.0.1", 0)
    before = threading.active_count()
    with _idle(port, METRICS_MAX_CONNECTIONS + 24) as idle:
        # Until the server has taken them all, those past the cap closed unanswered (was a
        # fixed 0.5 s, which a loaded machine could spend before taking them all).
        end = time.monotonic() + 30
        while _closed_by_server(idle) < 24:
            assert time.monotonic() < end, f"{_closed_by_server(idle)} of 24 closed"
            time.sleep(0.05)
        assert threading.active_count() <= before + METRICS_MAX_CONNECTIONS
    # Their threads end as they see the close, each giving its slot back: waited for. A
    # scrape sent before that found the cap still full and was closed unanswered
    # (RemoteDisconnected, about one run in six on a loaded machine).
    assert _threads_settle(before) <= before
    assert b"grpc_server_started_total" in _scrape(port)


def test_a_silent_connection_is_closed_and_scrapes_go_on() -> None:
    port = serve_metrics("127.0.0.1", 0, timeout=0.5, max_connections=2)
    before = threading.active_count()
    with _idle(port, 2) as (first, _second):
        # Closed by the server: our own timeout raises instead. It is 16 times the
        # server's and under the default (METRICS_TIMEOUT, 10 s), so a server that kept
        # silent connections open, or the default's, fails here; no clock besides.
        first.settimeout(8)
        assert first.recv(1) == b""
    # Their threads are gone: a scrape is served again.
    assert _threads_settle(before) <= before
    assert b"grpc_server_started_total" in _scrape(port)


def test_a_connection_past_the_cap_is_closed_unanswered() -> None:
    port = serve_metrics("127.0.0.1", 0, timeout=5, max_connections=1)
    with _idle(port, 1), socket.create_connection(("127.0.0.1", port)) as extra:
        extra.settimeout(3)
        extra.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            answer = extra.recv(1)
        except ConnectionResetError:  # closed with the request unread
            answer = b""
        assert answer == b""


async def test_a_servers_metrics_endpoint_takes_its_limits_from_the_settings() -> None:
    from services.common.server import GrpcServer
    from services.common.settings import CommonSettings

    settings = CommonSettings(metrics_idle_timeout=0.5, metrics_max_connections=1)  # type: ignore[call-arg]
    server = GrpcServer(settings, port=0, metrics_port=0)
    await server.start()
    try:
        assert server.metrics_port is not None
        with _idle(server.metrics_port, 1) as (silent,):
            # Closed by the server after 0.5 s, not 10 (the default): our own timeout,
            # between the two, raises instead of returning the close.
            silent.settimeout(8)
            assert silent.recv(1) == b""
    finally:
        await server.stop(0)
