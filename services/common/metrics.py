"""Prometheus metrics for every gRPC method, served on a plain HTTP endpoint.

Names, labels and code values follow the gRPC ecosystem's Prometheus conventions
(go-grpc-prometheus, grpc-ecosystem/go-grpc-middleware), so stock dashboards and alerts
work unchanged: ``grpc_code`` is the Go spelling of the status (``OK``, ``InvalidArgument``,
``Canceled`` …). Beside them, ``gensearch_grpc_server_in_flight`` adds what they lack: the
calls in progress, by the process (``server``) that serves them.
"""

from __future__ import annotations

import socket
import threading
from typing import Any, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

_METHOD = ["grpc_type", "grpc_service", "grpc_method"]

STARTED = Counter(
    "grpc_server_started_total", "Total number of RPCs started on the server.", _METHOD
)
HANDLED = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    [*_METHOD, "grpc_code"],
)
HANDLING = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _METHOD,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Total number of RPC stream messages received.", _METHOD
)
MSG_SENT = Counter(
    "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent.", _METHOD
)
IN_FLIGHT = Gauge(
    "gensearch_grpc_server_in_flight",
    "gRPC calls in progress, by serving process.",
    ["server", "grpc_service", "grpc_method"],
)

# Counted by services/common/redis_errors.py (its fixed sets of labels).
REDIS_ERRORS = Counter(
    "gensearch_redis_errors_total",
    "Redis calls that failed, by what Redis served and the kind of failure.",
    ["store", "kind"],
)

# grpc.StatusCode -> the name Go's codes.Code.String() gives it (the label value stock
# dashboards and alerts expect).
GO_CODE_NAMES = {
    code: "".join(part.capitalize() for part in code.name.split("_")) for code in grpc.StatusCode
} | {grpc.StatusCode.OK: "OK", grpc.StatusCode.CANCELLED: "Canceled"}


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return "bidi_stream" if response_streaming else "client_stream"
    return "server_stream" if response_streaming else "unary"


class MethodMetrics:
    """The series of one method, bound once at registration: a ``labels()`` lookup costs a
    lock and a dict lookup on every call."""

    def __init__(self, server: str, kind: str, service: str, method: str) -> None:
        labels = (kind, service, method)
        self._labels = labels
        self.started = STARTED.labels(*labels)
        self.handling = HANDLING.labels(*labels)
        self.received = MSG_RECEIVED.labels(*labels)
        self.sent = MSG_SENT.labels(*labels)
        self.in_flight = IN_FLIGHT.labels(server, service, method)
        self._handled = {grpc.StatusCode.OK: HANDLED.labels(*labels, "OK")}

    def start(self) -> None:
        self.started.inc()
        self.in_flight.inc()

    def handled(self, code: grpc.StatusCode, seconds: float) -> None:
        counter = self._handled.get(code)
        if counter is None:
            counter = self._handled[code] = HANDLED.labels(*self._labels, GO_CODE_NAMES[code])
        counter.inc()
        self.handling.observe(seconds)
        self.in_flight.dec()


def server_name(service: str) -> str:
    """'gensearch.memory.v1.MemoryService' -> 'memory': the label of the serving process
    (the gateway also serves the memory and retrieval APIs; this tells them apart)."""
    parts = service.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "gensearch" else service


def split_method(full_method: str) -> tuple[str, str]:
    """'/gensearch.memory.v1.MemoryService/GetConversation' -> (service, method)."""
    _, service, method = full_method.split("/", 2) if full_method.count("/") >= 2 else ("", "", "")
    return service, method


# The /metrics endpoint's limits (docs/operations.md#metrics-endpoints). prometheus_client's
# own start_http_server gives each connection a thread, with no timeout and no cap: every
# connection left open without a request held a thread for good, so anyone reaching the
# port could pile up threads until the process could start none (a pod's pids limit).
# A connection silent for METRICS_TIMEOUT seconds while its request is read, or not taking
# its reply within them, is closed; at most METRICS_MAX_CONNECTIONS are served at once (one
# thread each), and one past that is closed unanswered. These are the defaults; a server's
# come from its settings (GENSEARCH_<SERVICE>_METRICS_IDLE_TIMEOUT, _METRICS_MAX_CONNECTIONS).
METRICS_TIMEOUT = 10.0
METRICS_MAX_CONNECTIONS = 16


class _Handler(WSGIRequestHandler):
    def setup(self) -> None:
        super().setup()
        # Each read of the request; the whole reply (socket.sendall).
        self.connection.settimeout(cast(_MetricsServer, self.server).connection_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would be noise."""


class _MetricsServer(ThreadingWSGIServer):
    connection_timeout = METRICS_TIMEOUT
    max_connections = METRICS_MAX_CONNECTIONS
    # Connections the kernel holds until accepted (socketserver's default is 5).
    request_queue_size = 64

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self._slots.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that timed out or went away: nothing to report (socketserver
        printed a traceback to stderr, among the JSON lines)."""

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve_metrics(
    host: str,
    port: int,
    *,
    timeout: float = METRICS_TIMEOUT,
    max_connections: int = METRICS_MAX_CONNECTIONS,
) -> int:
    """Start the /metrics HTTP endpoint (prometheus_client's WSGI app, within the limits
    above) in a daemon thread; returns the bound port."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    server_class = type(
        "MetricsServer",
        (_MetricsServer,),
        {
            "address_family": family,
            "connection_timeout": timeout,
            "max_connections": max_connections,
        },
    )
    server: WSGIServer = make_server(
        str(address[0]), port, make_wsgi_app(), server_class, handler_class=_Handler
    )
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return int(server.server_port)
