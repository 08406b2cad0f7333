"""What services/common/trace_headers.py lets through, OpenTelemetry's propagators read
without a log line: for any header text, W3C-shaped or not."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from services.common.trace_headers import metadata_getter

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EXAMPLES = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Text near the W3C grammars: their characters, separators and spaces, long runs of them.
_near = st.text(alphabet="ab0=;,@ \t%*/-_xyz\u00e9\x7f", max_size=60)
_members = st.lists(_near, max_size=40).map(",".join)
_long = st.integers(min_value=0, max_value=10_000).map(lambda n: "k=" + "v" * n)
header = st.one_of(st.text(max_size=200), _near, _members, _long)


@EXAMPLES
@given(traceparent=st.one_of(st.just(TRACEPARENT), header), state=header, bag=header)
def test_what_the_getter_passes_the_propagators_read_silently(
    traceparent: str, state: str, bag: str, caplog: pytest.LogCaptureFixture
) -> None:
    carrier = [("traceparent", traceparent), ("tracestate", state), ("baggage", bag)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        TraceContextTextMapPropagator().extract(carrier, getter=metadata_getter)
        W3CBaggagePropagator().extract(carrier, getter=metadata_getter)
    assert [r.getMessage() for r in caplog.records] == []


def test_other_headers_pass_as_sent() -> None:
    # Another propagator's (OTEL_PROPAGATORS=b3multi): not ours to judge.
    carrier = [("x-b3-traceid", "not hex at all"), ("authorization-bin", b"\x00")]
    assert metadata_getter.get(carrier, "x-b3-traceid") == ["not hex at all"]
    assert metadata_getter.get(carrier, "authorization-bin") is None
