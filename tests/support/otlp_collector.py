"""An OTLP/gRPC trace collector on loopback: what services export, as received.
``tests/conftest.py`` makes the ``collector`` fixture available to every test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span


class Collector(otlp_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[otlp.ExportTraceServiceRequest] = []
        # Seconds each export waits before it is answered (a collector that is slow).
        self.delay = 0.0

    async def Export(
        self, request: otlp.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> otlp.ExportTraceServiceResponse:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.requests.append(request)
        return otlp.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, Span]]:
        """(service.name, span) of everything received."""
        found = []
        for request in self.requests:
            for resource in request.resource_spans:
                (name,) = [
                    a.value.string_value
                    for a in resource.resource.attributes
                    if a.key == "service.name"
                ]
                for scope in resource.scope_spans:
                    found += [(name, span) for span in scope.spans]
        return found


@pytest.fixture(name="collector")
async def collector_fixture() -> AsyncIterator[tuple[Collector, int]]:
    """The collector and its port on 127.0.0.1."""
    server = grpc.aio.server()
    received = Collector()
    otlp_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield received, port
    await server.stop(0)
