"""The OTEL_* variables our tracing reads stop a service at start, one line each naming the
variable, when the SDK or its OTLP/gRPC exporter could not use them as meant
(services/common/otel_environment.py). Before, some stopped it later in a traceback, some
logged an ERROR with a traceback and went on with a default, and some were replaced
silently (a sampler ratio of 10 sampled every trace; an OTLP/HTTP protocol exported over
gRPC all the same)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common.otel_environment import otel_problems
from services.common.settings import load_settings
from services.memory.settings import MemorySettings
from tests.common.test_settings_start_faults import _start

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


def _clear_otel(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"OTEL_EXPORTER_OTLP_TIMEOUT": "abc"},
            "OTEL_EXPORTER_OTLP_TIMEOUT: must be a number of seconds above 0",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "-1"},
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: must be a number of seconds above 0",
        ),
        (
            {"OTEL_EXPORTER_OTLP_COMPRESSION": "none"},
            "OTEL_EXPORTER_OTLP_COMPRESSION: must be gzip (unset: no compression)",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL: must be grpc: this build exports over OTLP/gRPC only "
            "(a collector's port 4317; OTEL_TRACES_EXPORTER=none exports nothing)",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "console"},
            "OTEL_TRACES_EXPORTER: must be otlp or none: this build exports over OTLP/gRPC only",
        ),
        (
            {"OTEL_SPAN_EVENT_COUNT_LIMIT": ""},
            "OTEL_SPAN_EVENT_COUNT_LIMIT: must be an integer from 0 up, or unset "
            "(empty is not unset)",
        ),
        (
            {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "abc"},
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: must be an integer from 0 up, or unset "
            "(empty is not unset)",
        ),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "abc"},
            "OTEL_BSP_MAX_QUEUE_SIZE: must be an integer above 0",
        ),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "100"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not exceed OTEL_BSP_MAX_QUEUE_SIZE (100)",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "alwayson"},
            "OTEL_TRACES_SAMPLER: must be one of always_on, always_off, traceidratio, "
            "parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "10"},
            "OTEL_TRACES_SAMPLER_ARG: must be a ratio from 0 to 1, e.g. 0.1",
        ),
        (
            {"OTEL_TRACES_SAMPLER": " traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            "OTEL_TRACES_SAMPLER: must be one of always_on, always_off, traceidratio, "
            "parentbased_always_on, parentbased_always_off, parentbased_traceidratio",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_TIMEOUT": "abc"},
            "OTEL_EXPORTER_OTLP_TIMEOUT: must be a number of seconds above 0",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0,1"},
            "OTEL_TRACES_SAMPLER_ARG: must be a ratio from 0 to 1, e.g. 0.1",
        ),
        (
            {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"},
            "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot be read (FileNotFoundError)",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://user:TOPSECRET@collector:99999"},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: must give its port as a number from 1 to 65535",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://tracer:TOPSECRET@collector:4317"},
            "OTEL_EXPORTER_OTLP_ENDPOINT: must not carry credentials (user:password@): put "
            "them in OTEL_EXPORTER_OTLP_HEADERS",
        ),
        # A header written as HTTP writes it: the exporter dropped it with a WARNING, and
        # exported without the credential.
        (
            {"OTEL_EXPORTER_OTLP_HEADERS": "authorization: Bearer TOPSECRET"},
            "OTEL_EXPORTER_OTLP_HEADERS: must be a comma-separated list of name=value headers",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-team=search,TOPSECRET"},
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS: must be a comma-separated list of name=value "
            "headers",
        ),
        # Dropped by the SDK with a WARNING quoting the entry, once per service.
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team search"},
            "OTEL_RESOURCE_ATTRIBUTES: must be comma-separated key=value pairs (no empty entry)",
        ),
        (
            {"OTEL_PROPAGATORS": "tracecontext,b3"},
            "OTEL_PROPAGATORS: must name propagators this build has (baggage, tracecontext) "
            "or none",
        ),
        (
            {"OTEL_PROPAGATORS": "tracecontext,"},
            "OTEL_PROPAGATORS: must name propagators this build has (baggage, tracecontext) "
            "or none",
        ),
    ],
)
def test_an_otel_variable_the_sdk_would_misread_stops_the_service(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variables: dict[str, str], expected: str
) -> None:
    _clear_otel(monkeypatch)
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path))
    for name, value in {**COLLECTOR, **variables}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as err:
        load_settings(MemorySettings)
    assert err.value.code == f"invalid setting {expected}"
    assert "TOPSECRET" not in str(err.value.code)


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"OTEL_EXPORTER_OTLP_TIMEOUT": "2.5", "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
        {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
        },
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SPAN_EVENT_COUNT_LIMIT": "unset"},
        {"OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "512", "OTEL_BSP_SCHEDULE_DELAY": "50"},
        {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100"},
        {"OTEL_TRACES_SAMPLER": "ParentBased_TraceIdRatio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.monitoring:4317"},
        # The specification: an empty variable is unset; a ratio sampler without its
        # argument takes 1.0.
        {"OTEL_TRACES_SAMPLER": "traceidratio"},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": ""},
        {"OTEL_TRACES_SAMPLER": "", "OTEL_TRACES_EXPORTER": ""},
        {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer abc, x-team = search ,"},
        {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "authorization=Bearer%20abc"},
        {"OTEL_PROPAGATORS": " tracecontext , baggage"},
        {"OTEL_PROPAGATORS": "none"},
        {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, team=a%20b"},
        {"OTEL_PROPAGATORS": ""},
    ],
)
def test_what_the_sdk_reads_as_meant_starts_the_service(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    _clear_otel(monkeypatch)
    for name, value in {**COLLECTOR, **variables}.items():
        monkeypatch.setenv(name, value)
    assert otel_problems() == []


def test_only_what_the_process_reads_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # No endpoint: nothing is exported, so the exporter's and the sampler's variables are
    # not read; tracing off: none is.
    _clear_otel(monkeypatch)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "abc")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "bogus")
    assert otel_problems() == []
    monkeypatch.setenv("OTEL_SPAN_LINK_COUNT_LIMIT", "-1")
    assert otel_problems() == [
        "OTEL_SPAN_LINK_COUNT_LIMIT: must be an integer from 0 up, or unset (empty is not unset)"
    ]
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert otel_problems() == []


@pytest.mark.parametrize(
    ("env", "line"),
    [
        # ``python -m services.memory`` with a timeout that is not a number: it started,
        # then died making the exporter, in a traceback.
        (
            {**COLLECTOR, "OTEL_EXPORTER_OTLP_TIMEOUT": "abc"},
            "invalid setting OTEL_EXPORTER_OTLP_TIMEOUT: must be a number of seconds above 0",
        ),
        # ``OTEL_PROPAGATORS`` is read by opentelemetry.propagate when it is imported (the
        # API, not the SDK, so ``OTEL_SDK_DISABLED=true`` does not spare it): an unknown
        # name stopped every service in a traceback before its settings were read.
        (
            {"OTEL_SDK_DISABLED": "true", "OTEL_PROPAGATORS": "xray"},
            "invalid setting OTEL_PROPAGATORS: must name propagators this build has "
            "(baggage, tracecontext) or none",
        ),
    ],
    ids=["timeout, tracing on", "propagator, tracing off"],
)
async def test_the_service_says_one_line_not_a_traceback(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    """An OTEL_* variable the process cannot use stops the memory service in one line
    naming it, whether tracing is on or off."""
    code, stderr = await _start(
        {"GENSEARCH_MEMORY_REDIS_URL": "redis://127.0.0.1:1/0", **env}, "memory", tmp_path
    )
    assert code == 1
    assert stderr.strip().splitlines() == [line]
