"""Prometheus metrics for every gRPC method, served on a plain HTTP endpoint.

Names, labels and code values follow the gRPC ecosystem's Prometheus conventions
(go-grpc-prometheus, grpc-ecosystem/go-grpc-middleware), so stock dashboards and alerts
work unchanged: ``grpc_code`` is the Go spelling of the status (``OK``, ``InvalidArgument``,
``Canceled`` …). Beside them, ``gensearch_grpc_server_in_flight`` adds what they lack: the
calls in progress, by the process (``server``) that serves them.
"""

from __future__ import annotations

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

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


def serve_metrics(host: str, port: int) -> int:
    """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
