"""Finished spans of every service in the test process, in memory.

A tracer provider's span processors cannot be removed, so one recorder is added to the
shared processors (``services.common.tracing``) once per process, when this module is
imported, and only keeps spans while a test holds the ``spans`` fixture: the rest of the
suite leaves nothing behind. ``tests/conftest.py`` makes the ``spans`` fixture available to
every test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing


class _Recorder(SimpleSpanProcessor):
    recording = False

    def on_end(self, span: ReadableSpan) -> None:
        if self.recording:
            super().on_end(span)


_exporter = InMemorySpanExporter()
_recorder = _Recorder(_exporter)
# On import, i.e. before any test builds a server: services trace as if exporting only
# when something receives their spans.
tracing.add_span_processor(_recorder)


@pytest.fixture(name="spans")
def spans_fixture() -> Iterator[InMemorySpanExporter]:
    """``spans.get_finished_spans()``: the spans ended during this test."""
    recorder, exporter = _recorder, _exporter
    exporter.clear()
    recorder.recording = True
    try:
        yield exporter
    finally:
        recorder.recording = False
        exporter.clear()
