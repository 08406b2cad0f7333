"""JSON logs on stderr with secrets redacted.

Known secret values are scrubbed from every record, together with anything that looks like
a bearer token or a provider key: the operator's (API keys, tokens: ``register_secret`` at
start-up) from every line, a caller's key (``hide_in_this_call``) from its own call's lines.
Each line carries an ISO-8601 UTC ``time`` (``2026-12-02T03:04:05.123Z``) and, when a span
is current (always, inside an RPC), the ``trace_id`` and ``span_id`` that find it in the
tracing backend and in the other services' logs. ``ThrottledWarning`` keeps a failing
dependency to one line per outage (per node of it: a Redis Cluster's masters each have their
own).
"""

from __future__ import annotations

import base64
import bisect
import functools
import html
import itertools
import logging
import math
import re
import sys
import time
from contextvars import Context, ContextVar
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from opentelemetry.trace import format_span_id, format_trace_id, get_current_span
from pythonjsonlogger.json import JsonFormatter
from redis.exceptions import AskError, MovedError

from services.common.call_deadline import context_past_the_call

REDACTED = "[REDACTED]"
# Secrets from configuration, kept for the life of the process and hidden everywhere.
_pinned: set[str] = set()
# The compiled regexes of the other spellings of this many secrets are kept (see _spellings).
SPELLINGS_CACHED = 256
# A good part of a secret of 2 * MIN_PIECE characters or more is redacted too (an upstream
# quoting a key cut short): a run of key characters found inside it, at least MIN_PIECE
# long and half its length. A provider's own mask ("sk-abc***xyz") shows less.
MIN_PIECE = 12


class _Known:
    """The secrets known at one moment, as redaction reads them: never changed, but
    replaced whole by ``register_secret`` or ``hide_in_this_call`` (a log record formatted
    on another thread meanwhile sees all of the old ones or all of the new).

    No pattern over all of them is compiled: that took ~0.2 s of the event loop with 256
    secrets of 1 KiB, for every new caller key (this, ~0.04 ms; bench/redaction.py). Each
    is looked for with ``in`` instead (a C substring search), only those no longer than the
    text searched (``lengths``, sorted, for bisect): a typical line is shorter than a key."""

    __slots__ = ("lengths", "piece_ends", "piece_lengths", "pieces", "secrets")

    def __init__(self, secrets: list[str]) -> None:
        secrets.sort(key=len)
        self.secrets = tuple(secrets)
        self.lengths = tuple(map(len, secrets))
        # Those long enough to be found by a piece, joined by NULs (one C search finds a
        # piece in any of them), with their lengths and where each ends.
        first = bisect.bisect_left(self.lengths, 2 * MIN_PIECE)
        self.pieces = "\0".join(self.secrets[first:])
        self.piece_lengths = self.lengths[first:]
        self.piece_ends = tuple(itertools.accumulate(n + 1 for n in self.piece_lengths))

    def found_in(self, text: str, shortest: int = 1) -> list[str]:
        """The secrets, at least ``shortest`` long, that ``text`` holds, longest first."""
        secrets = self.secrets
        first = bisect.bisect_left(self.lengths, shortest)
        last = bisect.bisect_right(self.lengths, len(text)) - 1
        return [secrets[i] for i in range(last, first - 1, -1) if secrets[i] in text]


_known: _Known | None = None
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    re.compile(
        r"(?i)((?:api[_-]?key|token|authorization|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"
    ),
    # A URL's query parameter that carries a credential (Google's ?key=, a signed URL's sig=).
    re.compile(r"(?i)([?&](?:key|sig|signature|code|password)=)[^&#\s\"']+"),
]


def register_secret(value: str | None) -> None:
    """Never log this value, in any call (ignored when too short to be a real secret): for
    the operator's own secrets, from configuration. A caller's key goes to
    ``hide_in_this_call`` instead."""
    if not value or len(value) < 4 or value in _pinned:
        return
    _pinned.add(value)
    _publish()


class _CallSecrets:
    """The keys one call carries (its ``x-*-api-key`` headers), and the secrets its log
    lines, errors and spans are redacted of: these and the operator's (``_pinned``)."""

    __slots__ = ("_combined", "secrets")

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        # (the operator's secrets it was built with, them and this call's): rebuilt when
        # one of the operator's is registered later. Replaced whole: the call's tasks and
        # threads may read it at once.
        self._combined: tuple[_Known | None, _Known] | None = None

    def known(self, pinned: _Known | None) -> _Known:
        combined = self._combined
        if combined is None or combined[0] is not pinned:
            everything = [*(pinned.secrets if pinned is not None else ()), *self.secrets]
            combined = self._combined = (pinned, _Known(everything))
        return combined[1]


# A caller's keys are its call's alone: hidden in what that call (and the tasks and threads
# it starts, which copy its context) logs, reports and traces, never in another call's. A
# process-wide list of callers' keys let any caller hide any word ("failed", a tenant's
# name) from every tenant's log lines with a header "x-foo-api-key: failed", and, bounded,
# let a caller push another call's key out with a flood of its own while that call ran.
_call_secrets: ContextVar[_CallSecrets | None] = ContextVar("gensearch_call_secrets", default=None)


def hide_in_this_call(value: str | None) -> None:
    """Never log this value in the call being served (its context: the tasks it starts and
    ``asyncio.to_thread`` copy it), nor quote it in its errors and spans (ignored when too
    short to be a real secret). For a caller's key: hidden from no other call's lines."""
    if not value or len(value) < 4 or value in _pinned:
        return
    current = _call_secrets.get()
    if current is not None and value in current.secrets:
        return
    _call_secrets.set(_CallSecrets((*(current.secrets if current else ()), value)))


def context_of_no_call() -> Context:
    """A copy of the current context holding nothing of the call being served, neither its
    caller's keys nor its deadline's cutoff (``call_deadline.context_past_the_call``): for
    long-lived work a call happens to start but that serves every call (a queue's
    workers), whose own lines must hide no word of the call that started it and whose
    work no call's deadline bounds."""
    context = context_past_the_call()
    context.run(_call_secrets.set, None)
    return context


# Query arguments of a service URL (Redis, Qdrant, an LLM endpoint) that carry a secret:
# redis-py takes ``?password=``, some endpoints ``?api-key=`` or ``?token=``.
_URL_SECRET_ARGUMENT = re.compile(
    r"(?i)((?:^|[?&;])(?:password|pass|passwd|pwd|secret|token|key|api[-_]?key|sig|signature)=)"
    r"([^&;#]*)"
)


def url_secrets(url: str) -> list[str]:
    """The secrets ``url`` carries, as written and percent-decoded: its user info's password
    and its credential query arguments (``password=``, ``api-key=`` ...)."""
    parts = urlsplit(url)
    try:
        found = [parts.password or ""]
    except ValueError:
        found = []
    found += [m.group(2) for m in _URL_SECRET_ARGUMENT.finditer(parts.query)]
    return [value for raw in found for value in {raw, unquote(raw)} if value]


def redacted_url(url: str) -> str:
    """``url`` as it may be shown: the password of its user info and its credential query
    arguments replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    user_info, at, host = netloc.rpartition("@")
    if at and ":" in user_info:
        netloc = f"{user_info.partition(':')[0]}:***@{host}"
    query = _URL_SECRET_ARGUMENT.sub(r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _publish() -> None:
    global _known
    _known = _Known([*_pinned])


def _current_known() -> _Known | None:
    """The secrets to hide here: the operator's, and the keys of the call being served."""
    call = _call_secrets.get()
    return _known if call is None else call.known(_known)


def redact(text: str) -> str:
    """``text`` without the operator's secrets, the keys of the call being served (its
    context) and anything shaped like a key or token."""
    known = _current_known()
    if known is not None:
        # Longest first, so a secret containing another is replaced whole.
        for secret in known.found_in(text):
            text = text.replace(secret, REDACTED)
        text = _redact_encoded(text, known)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text


# A known secret may be quoted in another spelling: an upstream's error body echoing the
# key percent-encoded (sk%2D...), JSON-, backslash- or HTML-escaped (sk\u002d..., &#45;),
# split across lines, or the base64 or hex of a header that carried it (Bearer sk-...,
# user:sk-...). Only secrets this long are looked for in those spellings: a shorter one
# would be found in ordinary text.
MIN_ENCODED_SECRET = 8
# What may mark an encoded or split secret; text with none of these is not decoded.
_ENCODING_MARKS = ("%", "\\", "&#", "\n", "\r")
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2})|([nrt])|(.))", re.DOTALL)
_LINE_BREAK = re.compile(r"[ \t]*[\r\n][ \t\r\n]*")
# Runs of base64 (either alphabet, line breaks and backslash escapes inside) and of hex
# long enough to hold one.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_\\\r\n-]{12,}=*")
_HEX_RUN = re.compile(r"\b(?:[0-9a-fA-F]{2}){8,}\b")
_B64_ALPHABET = str.maketrans("-_", "+/")
_PRINTABLE_RUN = re.compile(rb"[\x20-\x7e]{%d,}" % MIN_ENCODED_SECRET)


def _unescape(match: re.Match[str]) -> str:
    code, byte, gap, char = match.groups()
    if gap is not None:
        return "\n"
    return chr(int(code or byte, 16)) if (code or byte) else char


def _unescape_backslashes(text: str) -> str:
    return _ESCAPE.sub(_unescape, text)


_DECODING_STEPS = (unquote, _unescape_backslashes, html.unescape)


def _decodings(text: str) -> list[str]:
    """``text`` as is and after each step of decoding its percent-escapes, backslash escapes
    and HTML character references, three rounds at most, line breaks (with the blanks around
    them) removed from each. A secret is looked for in every one: a later step may undo what
    an earlier one revealed (a key holding ``\\0`` or ``%41``, escaped once)."""
    found = [_LINE_BREAK.sub("", text)]
    for _ in range(3):
        before = text
        for step in _DECODING_STEPS:
            decoded = step(text)
            if decoded != text:
                text = decoded
                found.append(_LINE_BREAK.sub("", text))
        if text == before:
            break
    return found


def _found_decoded(text: str, known: _Known) -> list[str]:
    """The secrets long enough to be looked for in another spelling that a decoding of
    ``text`` holds, longest first."""
    hits = {s for decoded in _decodings(text) for s in known.found_in(decoded, MIN_ENCODED_SECRET)}
    return sorted(hits, key=len, reverse=True)


@functools.lru_cache(maxsize=SPELLINGS_CACHED)
def _spellings(secret: str) -> re.Pattern[str]:
    """``secret`` however each of its characters is spelled (as is, percent-encoded once or
    more, escaped, an HTML character reference), line breaks allowed between them."""
    gap = r"(?:\s|\\[rnt]|%(?:25)*0[ad])*"
    parts = []
    for char in secret:
        code = ord(char)
        utf8 = "".join(f"%(?:25)*{b:02x}" for b in char.encode())
        forms = [re.escape(char), utf8, rf"\\u{code:04x}", rf"&#0*{code};", rf"&#x0*{code:x};"]
        if code < 256:
            forms.append(rf"\\x{code:02x}")
        if not char.isalnum():
            forms.append(re.escape("\\" + char))
        parts.append("(?:" + "|".join(forms) + ")")
    return re.compile(gap.join(parts), re.IGNORECASE)


def _encoded_secret(blob: str, known: _Known) -> bool:
    """Whether ``blob``, a run of base64 or hex, decodes (at some alignment) to bytes
    holding a known secret."""
    # Escaped line breaks and slashes ("\\n", "\\/" in JSON) are no part of the encoding.
    chars = blob.replace("\\n", "\n").replace("\\r", "\n").replace("\\", "")
    chars = _LINE_BREAK.sub("", chars).rstrip("=")
    decoded: list[bytes] = []
    if _HEX_RUN.fullmatch(chars):
        decoded.append(bytes.fromhex(chars))
        decoded.append(bytes.fromhex(chars[1 : len(chars) - 1]))
    chars = chars.translate(_B64_ALPHABET)
    for start in range(4):
        part = chars[start:]
        if len(part) % 4 == 1:  # a last lone character holds no whole byte
            part = part[:-1]
        part += "=" * (-len(part) % 4)
        try:
            decoded.append(base64.b64decode(part, validate=True))
        except ValueError:
            continue
    # Only printable runs are searched: a secret is one, and whatever else decodes from
    # ordinary text (a path, an id) almost never holds one that long.
    for data in decoded:
        for run in _PRINTABLE_RUN.finditer(data):
            if known.found_in(run.group(0).decode("ascii"), MIN_ENCODED_SECRET):
                return True
    return False


# The most characters of text times characters of a secret that finding a secret's other
# spellings in place (``_spellings``) may take, summed over the secrets found: that search
# tries every start in the text, as far as the secret, so a caller's own 1 KB key of one
# repeated character, quoted percent-encoded in a long upstream error (the caller's own
# endpoint writes both), held the event loop for seconds per 100 KB. Past it, a text that
# holds a secret in another spelling is not shown at all, as when the spelling is unknown.
# A constant, not a setting: no caller is ever refused by it (a log line or message is
# redacted whole instead), and raising it only lets one text hold the event loop longer.
MAX_SPELLING_WORK = 1 << 18


def _redact_encoded(text: str, known: _Known) -> str:
    """Known secrets in the other spellings an echo may use (see ``MIN_ENCODED_SECRET``)."""
    if any(mark in text for mark in _ENCODING_MARKS):
        hits = _found_decoded(text, known)
        if sum(len(text) * len(secret) for secret in hits) > MAX_SPELLING_WORK:
            return REDACTED
        for secret in hits:
            text = _spellings(secret).sub(REDACTED, text)
        if hits and _found_decoded(text, known):
            return REDACTED  # spelled in a way not undone above: nothing of it is shown
    # A run of these characters may be a good part of a secret, or hold one in base64 or hex.
    return _BASE64_RUN.sub(
        lambda m: (
            REDACTED
            if _part_of_secret(m.group(0), known) or _encoded_secret(m.group(0), known)
            else m.group(0)
        ),
        text,
    )


def _part_of_secret(piece: str, known: _Known) -> bool:
    """Whether ``piece`` is at least half of a registered secret (see ``MIN_PIECE``)."""
    # Shortest first: those a piece may be half of, at most twice its length, come first,
    # and only they are searched (a run of ordinary text is shorter than most keys).
    count = bisect.bisect_right(known.piece_lengths, 2 * len(piece))
    return count > 0 and known.pieces.find(piece, 0, known.piece_ends[count - 1]) != -1


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


# Fields the formatter writes itself, which cannot hold a secret, are not scrubbed; nor is
# the chassis' access line (services/common/chassis.py), written once per RPC from values it
# made itself: a registered method name, a status code, the authenticated user and tenant
# (names from the operator's key configuration), a duration. Scrubbing those would be a
# third of the line's cost.
_OWN_FIELDS = frozenset({"time", "level", "name", "service", "trace_id", "span_id"})
ACCESS_LOGGER = "gensearch.access"
_ACCESS_FIELDS = _OWN_FIELDS | {"message", "method", "code", "user", "tenant", "duration_ms"}


class RedactingJsonFormatter(JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{utc}.{int(record.msecs):03d}Z"

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        # Formatted on the logging thread, i.e. in the caller's context (a plain
        # StreamHandler, no queue), so the current span is the caller's.
        context = get_current_span().get_span_context()
        if context.is_valid:
            log_data["trace_id"] = format_trace_id(context.trace_id)
            log_data["span_id"] = format_span_id(context.span_id)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        safe = _ACCESS_FIELDS if log_data.get("name") == ACCESS_LOGGER else _OWN_FIELDS
        return {
            k: v if k in safe else _scrub(v)
            for k, v in super().process_log_record(log_data).items()
        }


def json_formatter(service: str = "gensearch") -> RedactingJsonFormatter:
    """One JSON object per line: time, level, logger name, message, service, the trace ids
    and whatever ``extra`` the call passed."""
    return RedactingJsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "asctime": "time"},
        static_fields={"service": service},
    )


def configure_logging(level: str = "INFO", service: str = "gensearch") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A library's warnings.warn (qdrant-client's when a Qdrant server is unreachable, say)
    # went to stderr as plain text: not JSON, and not redacted, though it may quote a URL.
    # As records of the "py.warnings" logger they are both.
    logging.captureWarnings(True)
    # httpx logs one INFO line per request, URL included: one line per hit of every fan-out,
    # and the URL of a provider may carry its key. Only their warnings, unless debugging.
    # httpx2 and httpcore2: the HTTP client openai_api.py gives the OpenAI SDK (LLM calls).
    for chatty in ("httpx", "httpcore", "httpx2", "httpcore2"):
        logging.getLogger(chatty).setLevel(level if level == "DEBUG" else "WARNING")


class ThrottledWarning:
    """A warning about a dependency that failed a call (Redis down, say), logged at most
    once every ``every`` seconds: one line per outage, not one per call. ``message`` has one
    ``%s``, for the error's type (its text may quote what it was sent). ``recovery``: the
    INFO line that ends an outage (``recovered``), written once here: ``recovered`` runs
    after every call that succeeds, so it builds nothing; None, no such line.

    A dependency of several nodes (a Redis Cluster's masters) is tracked per ``node`` (its
    address, as the call names it; never a URL's user info or password): each node's
    outage is its own warning and its own recovery line, both naming it, and one node's
    answer ends only its own outage. Before, a partial outage (one node down, the others
    answering) flipped one shared flag: every call the healthy nodes served logged the
    recovery line, and the next call to the dead node the warning again, every ``every``
    seconds. ``node`` None: the dependency as one (its only node, or a failing node that
    could not be known), whose outage any answer ends."""

    __slots__ = ("_down", "_every", "_log", "_message", "_nodes", "_recovery")

    # Nodes remembered at most (each one's last warning and whether it is down): a
    # cluster's masters are a handful; past this, those not down are forgotten.
    MAX_NODES = 256

    def __init__(
        self,
        log: logging.Logger,
        message: str,
        *,
        recovery: str | None = None,
        every: float = 30.0,
    ) -> None:
        self._log = log
        self._message = message
        self._recovery = recovery
        self._every = every
        # Node (None: the dependency as one) -> [when it was last warned about, whether an
        # outage was warned about and nothing has answered since (``recovered``)].
        self._nodes: dict[str | None, list[Any]] = {}
        self._down = 0  # how many of them are down

    def __call__(
        self,
        err: BaseException,
        *,
        extra: dict[str, Any] | None = None,
        cause: str = "",
        node: str | None = None,
    ) -> None:
        """``extra``: fields of the line (a redacted description of the error, say);
        ``cause``: what the ``%s`` says instead of the error's type; ``node``: the node of
        the dependency that failed (see the class), named in the line and its field
        ``node``."""
        now = time.monotonic()
        state = self._nodes.get(node)
        if state is None:
            self._forget_some()
            state = self._nodes[node] = [-math.inf, False]
        if now - state[0] < self._every:
            return
        state[0] = now
        what = cause or type(err).__name__
        if node is not None:
            what = f"{what} at node {node}"
            extra = {**(extra or {}), "node": node}
        if isinstance(err, MovedError | AskError):
            # Not an outage but a setting: a standalone client given a Redis Cluster node
            # fails on every key of another node's slots, for good (the keys of its own
            # slots answer: no "again" line for those).
            self._log.error(
                self._message + " (the Redis URL names a Redis Cluster node: set this "
                "service's GENSEARCH_<SERVICE>_REDIS_CLUSTER=true)",
                type(err).__name__,
            )
            return
        if not state[1]:
            state[1] = True
            self._down += 1
        self._log.warning(self._message, what, extra=extra)

    def recovered(self, node: str | None = None) -> None:
        """``node`` answered again (None: the dependency): the ``recovery`` line logged
        (INFO) once when its outage was warned about; otherwise nothing but a check. An
        answer also ends the outage of a node that could not be known (None): the
        dependency is reachable. The warnings keep their pace (at most one every ``every``
        seconds per node)."""
        if not self._down:
            return
        for which in (node, None) if node is not None else (None,):
            state = self._nodes.get(which)
            if state is not None and state[1]:
                state[1] = False
                self._down -= 1
                if self._recovery is None:
                    continue
                if which is None:
                    self._log.info(self._recovery)
                else:
                    self._log.info("%s (node %s)", self._recovery, which, extra={"node": which})

    def retired(self, node: str, why: str) -> None:
        """Ends ``node``'s outage though it did not answer: it is no longer called at all
        (``why``; a cluster master a failover replaced). The recovery line says so, naming
        the node; before, such an outage stayed open for good, and its end was never
        logged."""
        state = self._nodes.get(node)
        if state is None or not state[1]:
            return
        state[1] = False
        self._down -= 1
        if self._recovery is not None:
            self._log.info(
                "%s (node %s is no longer called: %s)",
                self._recovery,
                node,
                why,
                extra={"node": node, "retired": True},
            )

    @property
    def down_nodes(self) -> list[str]:
        """The named nodes whose outage was warned about and has not ended."""
        return [n for n, state in self._nodes.items() if n is not None and state[1]]

    @property
    def any_down(self) -> bool:
        """Whether an outage (of any node) was warned about and has not ended: a caller
        that must work out which node answered (``recovered``) need not when none is."""
        return self._down > 0

    def _forget_some(self) -> None:
        if len(self._nodes) >= self.MAX_NODES:
            for which in [n for n, state in self._nodes.items() if not state[1]]:
                del self._nodes[which]


# gRPC's asyncio server logs through this logger.
GRPC_SERVER_LOGGER = "grpc._cython.cygrpc"
_SERVED_METHOD = re.compile(r"servicer method \[([^\]]*)\]")


class UndeliveredReplyFilter(logging.Filter):
    """gRPC's "ExecuteBatchError raised in core by servicer method [...]", an ERROR with a
    traceback, made one INFO line without one.

    gRPC logs it when core fails to send what a call's handler returned (a unary reply with
    its status) because the call already ended on the other side: its client refused a
    reply larger than its own receive limit (gRPC's default 4 MiB; the client then gets
    RESOURCE_EXHAUSTED "Received message larger than max" from its library), or went away
    while the reply was being sent. Nothing failed in the server and nothing can be done
    there: the client's limit is the client's to raise. A stream's writes go through the
    chassis, which ends the call on such a failure without gRPC logging it."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is None or type(err).__name__ != "ExecuteBatchError":
            return True
        found = _SERVED_METHOD.search(record.getMessage())
        record.msg = (
            "the reply to %s was not delivered: the call ended on the client's side while it "
            "was sent (the reply was larger than the client's receive limit, gRPC's default "
            "4 MiB, or the client went away)"
        )
        record.args = (found.group(1) if found else "a call",)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info = record.exc_text = record.stack_info = None
        return True


_undelivered = UndeliveredReplyFilter()


def quiet_undelivered_replies() -> None:
    """Installs ``UndeliveredReplyFilter`` on gRPC's server logger (once per process)."""
    grpc_log = logging.getLogger(GRPC_SERVER_LOGGER)
    if _undelivered not in grpc_log.filters:
        grpc_log.addFilter(_undelivered)
