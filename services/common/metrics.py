"""Prometheus metrics for every gRPC method, served on a plain HTTP endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

REQUESTS = Counter(
    "gensearch_grpc_requests_total",
    "Finished gRPC calls by serving process, method and status code.",
    ["server", "service", "method", "code"],
)
LATENCY = Histogram(
    "gensearch_grpc_request_duration_seconds",
    "gRPC call latency by serving process and method.",
    ["server", "service", "method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
IN_FLIGHT = Gauge(
    "gensearch_grpc_in_flight", "gRPC calls in progress.", ["server", "service", "method"]
)


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
