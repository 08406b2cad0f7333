"""Spans recorded in memory, for tests of the tracing hooks.

The OpenTelemetry API has one global tracer provider per process and it can be set only once,
so this installs the SDK's provider once per test session (or joins the one already
installed) and records every span with an ``InMemorySpanExporter``. Our modules take their
tracers from the API (``trace.get_tracer``), which follows the global provider, so nothing is
patched.

    from tests.support.spans import spans  # noqa: F401  (the fixture)

    async def test_x(spans: InMemorySpanExporter) -> None:
        ...
        [span] = [s for s in spans.get_finished_spans() if s.name == "chat m"]
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@pytest.fixture(scope="session")
def span_exporter() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            pytest.skip("another kind of tracer provider is installed in this process")
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # later spans are dropped, not kept in memory


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    """The session's exporter, emptied for this test."""
    span_exporter.clear()
    return span_exporter
