"""The standard ``OTEL_*`` variables our tracing reads (services/common/tracing.py), checked
at start as our own settings are: one line per invalid variable, never its value.

The OpenTelemetry SDK and its OTLP/gRPC exporter read them when the first tracer provider
and the exporter are made, after the service has started, and each misreads a bad value in
its own way: some stopped the service with a traceback (``OTEL_EXPORTER_OTLP_TIMEOUT=abc``,
``OTEL_EXPORTER_OTLP_COMPRESSION=none``, ``OTEL_SPAN_EVENT_COUNT_LIMIT=`` empty), some
logged an ERROR with a traceback and went on with a default (``OTEL_BSP_*``, an unreadable
``OTEL_EXPORTER_OTLP_CERTIFICATE``: then the system's CAs), and some were quietly replaced:
an unknown ``OTEL_TRACES_SAMPLER``, or a ratio ``OTEL_TRACES_SAMPLER_ARG`` that is not a
number from 0 to 1 (``10`` meant as 10 %), sampled every trace; ``OTEL_TRACES_EXPORTER=
console`` or ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` (port 4318) exported over OTLP/gRPC
all the same, every batch failing. Only what the process will read is checked: nothing with
``OTEL_SDK_DISABLED=true``, the exporter's, the batch processor's and the sampler's
variables only when spans are exported (an OTLP endpoint set).

Two more were found by running the services as an operator would: ``OTEL_PROPAGATORS``
naming a propagator this build does not have (``b3``, ``xray``, or an empty name from a
stray comma) stopped every service in a traceback from ``opentelemetry.propagate``'s
import, before any setting was checked, and with ``OTEL_SDK_DISABLED=true`` too (the
propagators are the API's, not the SDK's); and an ``OTEL_EXPORTER_OTLP_HEADERS`` entry
that is not ``name=value`` (``authorization: Bearer …``) was dropped with a WARNING, so
every export went without the credential it was meant to carry.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from services.common.settings import grpc_target_setting

# The exporter this build has: OTLP over gRPC (opentelemetry-exporter-otlp-proto-grpc).
EXPORTERS = ("otlp", "none")
# The SDK's samplers (OTEL_TRACES_SAMPLER), and those that take OTEL_TRACES_SAMPLER_ARG.
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
RATIO_SAMPLERS = ("traceidratio", "parentbased_traceidratio")
# The SDK's span limits: a non-negative integer each, or "unset" (no limit).
SPAN_LIMITS = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
)
# The batch span processor's (milliseconds and span counts) and the SDK's defaults of the
# two that must agree (a batch no larger than the queue).
BATCH_POSITIVE = (
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
)
BATCH_TIMEOUT = "OTEL_BSP_EXPORT_TIMEOUT"
DEFAULT_QUEUE_SIZE = 2048
DEFAULT_BATCH_SIZE = 512
# The propagators opentelemetry.propagate loads by name (OTEL_PROPAGATORS); "none" is none.
PROPAGATORS = "OTEL_PROPAGATORS"
PROPAGATOR_GROUP = "opentelemetry_propagator"
HEADERS = ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
# One header as the OTLP exporter takes it (the specification's name=value, and the
# exporter's liberal reading: a value may hold spaces); entries are split at commas.
_HEADER = re.compile(
    r"[ \t]*[\x21\x23-\x27\x2a\x2b\x2d\x2e\x30-\x39\x41-\x5a\x5e-\x7a\x7c\x7e]+[ \t]*="
    r"[\x20\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
)
_HEADER_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")
ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
PROTOCOLS = ("OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
TIMEOUTS = ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
COMPRESSIONS = ("OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
FILES = (
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY",
    "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
)


def otel_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """``VARIABLE: what is wrong`` for each ``OTEL_*`` variable this process would read and
    could not use as its operator meant; never the value (a header or an endpoint may hold
    a credential)."""
    # Read on import of opentelemetry.propagate, whether the SDK is disabled or not.
    problems = [f"{PROPAGATORS}: {problem}" for problem in _propagator_problems(environ)]
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return problems
    problems += [f"{name}: {problem}" for name, problem in _tracing(environ)]
    # Empty is unset (the specification's rule for every OTEL_* variable): otlp.
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    if exporter == "otlp" and any(environ.get(name) for name in ENDPOINTS):
        problems += [f"{name}: {problem}" for name, problem in _export(environ)]
    return problems


def _tracing(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    found = []
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter and exporter not in EXPORTERS:
        found.append(
            ("OTEL_TRACES_EXPORTER", "must be otlp or none: this build exports over OTLP/gRPC only")
        )
    # Each entry key=value (the SDK's resource detector drops any other with a WARNING
    # quoting it, once per tracer provider: four times under gensearch up).
    attributes = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if attributes and any("=" not in entry for entry in attributes.split(",")):
        found.append(
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "must be comma-separated key=value pairs (no empty entry)",
            )
        )
    for name in SPAN_LIMITS:
        value = environ.get(name)
        if value is not None and value.strip().lower() != "unset" and _integer(value) is None:
            # Empty is refused too: this SDK reads an empty span limit as set, and fails.
            found.append((name, "must be an integer from 0 up, or unset (empty is not unset)"))
    return found


def _export(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    found = []
    for name in ENDPOINTS:
        problem = _endpoint_problem(environ.get(name, ""))
        if problem:
            found.append((name, problem))
    # The traces' own protocol, else the general one: what decides how spans would go.
    protocol = next((n for n in reversed(PROTOCOLS) if environ.get(n, "").strip()), None)
    if protocol and environ[protocol].strip().lower() != "grpc":
        found.append(
            (
                protocol,
                "must be grpc: this build exports over OTLP/gRPC only (a collector's port "
                "4317; OTEL_TRACES_EXPORTER=none exports nothing)",
            )
        )
    for name in TIMEOUTS:
        value = environ.get(name)
        if value is not None and not _positive_seconds(value):
            found.append((name, "must be a number of seconds above 0"))
    for name in COMPRESSIONS:
        value = environ.get(name)
        if value is not None and value.strip().lower() != "gzip":
            found.append((name, "must be gzip (unset: no compression)"))
    for name in HEADERS:
        if not _headers_are_pairs(environ.get(name, "")):
            found.append((name, "must be a comma-separated list of name=value headers"))
    for name in FILES:
        problem = _file_problem(environ.get(name, ""))
        if problem:
            found.append((name, problem))
    found += _batch_problems(environ)
    # Read as the SDK reads it: lower-cased, not stripped (" traceidratio" would be an
    # unknown sampler, replaced by the default, which samples every trace); empty is unset.
    sampler = environ.get("OTEL_TRACES_SAMPLER", "").lower()
    if sampler and sampler not in SAMPLERS:
        found.append(("OTEL_TRACES_SAMPLER", f"must be one of {', '.join(SAMPLERS)}"))
    elif sampler in RATIO_SAMPLERS and environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
        # A ratio sampler without its argument samples every trace (1.0, the
        # specification's default): as meant.
        ratio = _number(environ["OTEL_TRACES_SAMPLER_ARG"])
        if ratio is None or not 0 <= ratio <= 1:
            found.append(("OTEL_TRACES_SAMPLER_ARG", "must be a ratio from 0 to 1, e.g. 0.1"))
    return found


def _propagator_problems(environ: Mapping[str, str]) -> list[str]:
    """The names in ``OTEL_PROPAGATORS`` this build cannot load, as opentelemetry.propagate
    reads them (split at commas, stripped; ``none`` anywhere means none at all)."""
    configured = environ.get(PROPAGATORS, "")
    if not configured:
        return []
    names = [name.strip() for name in configured.split(",")]
    if any(name.lower() == "none" for name in names):
        return []
    installed = sorted(entry.name for entry in entry_points(group=PROPAGATOR_GROUP))
    unknown = [name for name in names if name not in installed]
    if not unknown:
        return []
    # The names are not secrets, but an empty one (a stray comma) would read as nothing.
    return [f"must name propagators this build has ({', '.join(installed)}) or none"]


def _headers_are_pairs(value: str) -> bool:
    return all(
        _HEADER.fullmatch(entry) for entry in _HEADER_SEPARATOR.split(value.strip()) if entry
    )


def _batch_problems(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    found = []
    values: dict[str, int] = {}
    for name in BATCH_POSITIVE:
        value = environ.get(name)
        if value is None:
            continue
        number = _integer(value)
        if number is None or number < 1:
            found.append((name, "must be an integer above 0"))
        else:
            values[name] = number
    value = environ.get(BATCH_TIMEOUT)
    if value is not None and _integer(value) is None:
        found.append((BATCH_TIMEOUT, "must be an integer from 0 up (milliseconds)"))
    queue = values.get("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_QUEUE_SIZE)
    batch = values.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH_SIZE)
    if batch > queue:
        found.append(
            (
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                f"must not exceed OTEL_BSP_MAX_QUEUE_SIZE ({queue})",
            )
        )
    return found


def _endpoint_problem(value: str) -> str | None:
    """What keeps ``value`` from being a collector the OTLP/gRPC exporter can reach: an
    http(s) URL (the exporter keeps its host and port) or a gRPC target."""
    if not value:
        return None
    if "://" in value and urlsplit(value).scheme.lower() in ("http", "https"):
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            return "must give its port as a number from 1 to 65535"
        if not parts.hostname or any(c.isspace() for c in value):
            return "must be an http:// or https:// URL of a collector, e.g. http://collector:4317"
        if port == 0:
            return "must give its port as a number from 1 to 65535"
        if parts.username is not None or parts.password is not None:
            # gRPC takes a user info as part of the host name: no export ever reached it.
            return (
                "must not carry credentials (user:password@): put them in "
                "OTEL_EXPORTER_OTLP_HEADERS"
            )
        return None
    try:
        grpc_target_setting(value)
    except ValueError:
        return "must be an http:// or https:// URL of a collector, e.g. http://collector:4317"
    return None


def _file_problem(path: str) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb"):
            return None
    except OSError as err:
        return f"cannot be read ({type(err).__name__})"


def _integer(value: str) -> int | None:
    try:
        number = int(value.strip())
    except ValueError:
        return None
    return number if number >= 0 else None


def _number(value: str) -> float | None:
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _positive_seconds(value: str) -> bool:
    number = _number(value)
    return number is not None and number > 0
