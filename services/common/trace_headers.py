"""The W3C trace headers a caller sends (``traceparent``, ``tracestate``, ``baggage``), read
for OpenTelemetry's propagators from gRPC invocation metadata.

Before anything authenticates the call, the propagators parse what the caller sent, and
some of what they refuse they refuse with a WARNING: a ``traceparent`` over 512
characters, a ``tracestate`` over 8192 or with a malformed member, a ``baggage`` over 8192
bytes (quoting the whole header in the line) or with a malformed member. Anyone could then
write a log line per call, of text they chose. So a header of these three that is not
wholly well-formed (https://www.w3.org/TR/trace-context/, https://www.w3.org/TR/baggage/),
or is past the propagators' bounds, is dropped here, unread and unlogged, as if it had not
been sent: the call starts a trace of its own (and, from a caller not trusted with its
trace, it would have anyway, only linked). Other propagators' headers (``OTEL_PROPAGATORS``)
pass as sent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from opentelemetry.propagators.textmap import Getter

Metadata = Sequence[tuple[str, str | bytes]]

# traceparent: version-trace_id-parent_id-flags, lower-case hex; a later version may add
# fields after a "-" (read by version 00's rules). Past 512 characters the propagator
# warns; this is its own bound.
MAX_TRACEPARENT = 512
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[\x21-\x7e]*)?")

# tracestate: up to 32 list-members key=value, split by "," (optional spaces or tabs, empty
# members allowed); several headers are one list. The propagator's bound is 8192
# characters of the headers joined.
MAX_TRACESTATE = 8192
MAX_TRACESTATE_MEMBERS = 32
_TRACESTATE_KEY = (
    r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
)
_TRACESTATE_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_TRACESTATE_MEMBER = re.compile(rf"{_TRACESTATE_KEY}={_TRACESTATE_VALUE}")

# baggage: up to 180 list-members key=value;property..., each up to 4096 characters, the
# header up to 8192 bytes; keys are tokens (RFC 9110), values baggage-octets (URL-encoded).
MAX_BAGGAGE = 8192
MAX_BAGGAGE_MEMBERS = 180
MAX_BAGGAGE_MEMBER = 4096
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_BAGGAGE_VALUE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_OWS = r"[ \t]*"
_BAGGAGE_MEMBER = re.compile(
    rf"{_TOKEN}{_OWS}={_OWS}{_BAGGAGE_VALUE}"
    rf"(?:{_OWS};{_OWS}{_TOKEN}(?:{_OWS}={_OWS}{_BAGGAGE_VALUE})?)*"
)
_LIST_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def traceparent_ok(values: Sequence[str]) -> bool:
    """One traceparent, of the W3C form, within the propagator's bound."""
    if len(values) != 1 or len(values[0]) > MAX_TRACEPARENT:
        return False
    return _TRACEPARENT.fullmatch(values[0].strip(" \t")) is not None


def tracestate_ok(values: Sequence[str]) -> bool:
    """Every list-member of every tracestate header well-formed, at most 32 of them, and
    the headers joined within the propagator's bound."""
    if sum(len(v) for v in values) + len(values) - 1 > MAX_TRACESTATE:
        return False
    members = [m.strip(" \t") for v in values for m in v.split(",")]
    members = [m for m in members if m]
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return False
    return all(_TRACESTATE_MEMBER.fullmatch(m) for m in members)


def baggage_ok(values: Sequence[str]) -> bool:
    """Each baggage header ASCII within 8192 bytes, with at most 180 list-members, each
    well-formed and within 4096 characters."""
    for value in values:
        if len(value) > MAX_BAGGAGE or not value.isascii():
            return False
        members = _LIST_SEPARATOR.split(value.strip(" \t"))
        if len(members) > MAX_BAGGAGE_MEMBERS:
            return False
        for member in members:
            if len(member) > MAX_BAGGAGE_MEMBER or not _BAGGAGE_MEMBER.fullmatch(member):
                return False
    return True


_CHECKS: dict[str, Callable[[Sequence[str]], bool]] = {
    "traceparent": traceparent_ok,
    "tracestate": tracestate_ok,
    "baggage": baggage_ok,
}


class _MetadataGetter(Getter[Metadata]):
    """Reads propagation headers from gRPC invocation metadata (a sequence of pairs); a
    W3C one that is not well-formed reads as absent (see the module's docstring)."""

    def get(self, carrier: Metadata, key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        check = _CHECKS.get(key)
        if not values or (check is not None and not check(values)):
            return None
        return values

    def keys(self, carrier: Metadata) -> list[str]:
        return [k for k, _ in carrier]


metadata_getter = _MetadataGetter()
