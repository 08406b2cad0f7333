"""The gateway as an operator runs it (``python -m services.gateway``) exporting to an
OTLP/gRPC collector on loopback: spans arrive, named and attributed as docs/operations.md
says, a caller's trace context only linked, no key or prompt in what is exported."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.gateway.conftest import ALICE, StackFactory, books_search, create_books
from tests.support.gateway_process import GatewayProcess
from tests.support.otlp_collector import Collector

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
PROMPT = "Summarise the zanyness of {title}"


async def test_the_gateway_exports_its_trace_over_otlp(
    stack_factory: StackFactory, collector: tuple[Collector, int]
) -> None:
    received, port = collector
    stack = await stack_factory()
    await create_books(stack)
    gateway = GatewayProcess(stack)
    gateway.env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = gw_grpc.GatewayServiceStub(channel)
            caller = (("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),)
            response = await stub.GenerativeSearch(
                books_search(limit=2, single_prompt=PROMPT, grouped_task="Rank them"),
                metadata=ALICE + caller,
            )
        assert all(h.generation.result for h in response.hits)
        end = asyncio.get_running_loop().time() + 30
        while not any(s.name.endswith("/GenerativeSearch") for _, s in received.spans()):
            assert asyncio.get_running_loop().time() < end, "no span reached the collector"
            await asyncio.sleep(0.05)
    finally:
        await gateway.kill()
    spans = received.spans()
    assert {service for service, _ in spans} == {"gensearch-gateway"}
    (root,) = [
        s for _, s in spans if s.name == "/gensearch.gateway.v1.GatewayService/GenerativeSearch"
    ]
    assert root.kind == Span.SPAN_KIND_SERVER and not root.parent_span_id
    (link,) = root.links
    assert (link.trace_id.hex(), link.span_id.hex()) == (CALLER_TRACE, CALLER_SPAN)
    ours = [s for _, s in spans if s.trace_id == root.trace_id]
    names = {s.name for s in ours}
    assert {"generate hit 0", "generate hit 1", "generate grouped"} <= names
    assert "/gensearch.generation.v1.GenerationService/Generate" in names
    exported = b"".join(r.SerializeToString() for r in received.requests)
    for secret in (ALICE[0][1].split()[-1].encode(), b"zanyness", b"Rank them"):
        assert secret not in exported
