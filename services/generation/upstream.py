"""Upstream faults, and what each becomes for our caller.

The provider adapter turns whatever an attempt raised (an SDK error, a deadline, a malformed
answer) into an ``UpstreamFault``; the retry loop decides on it; whatever is left becomes a
``ServiceError`` here, in one table. Messages name the provider, never the key, and
upstream 401/403 bodies are never echoed (some quote part of the key).
"""

from __future__ import annotations

import openai

from services.common.egress import UPSTREAM_REDIRECT, refusal, url_not_allowed
from services.common.errors import (
    ATTEMPTS,
    WAIT_MS,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
    quote,
)
from services.common.logs import redact
from services.common.openai_api import too_large
from services.common.upstream_retry import is_transient, server_wait

BAD_UPSTREAM_RESPONSE = "BAD_UPSTREAM_RESPONSE"
ALLOWLIST_SETTING = "GENSEARCH_GENERATION_ALLOWED_HOSTS"
MAX_URL_SETTING = "GENSEARCH_GENERATION_MAX_URL_CHARS"
_MAX_MESSAGE = 300
# Characters of an upstream message read to quote from it. Redaction (every known secret
# looked for in every spelling) costs in the length of the text, on the event loop, and a
# message may be as long as GENSEARCH_GENERATION_MAX_RESPONSE_BYTES: a caller's own
# base_url answering a 16 MB error held the loop for seconds. A longer message is cut to
# this first, and what lies within _CUT_MARGIN of the cut is never shown: a secret cut in
# two there is not found whole, so not redacted (see _clean). Constants, not settings:
# they refuse nothing (the call fails as it would; only less of the upstream's message is
# quoted, and at most _MAX_MESSAGE characters of it ever are), so a setting would only let
# an operator make redaction hold the event loop longer.
_QUOTED_WINDOW = 8 * 1024
_CUT_MARGIN = 4 * 1024
# What an attempt may raise besides UpstreamFault: the SDK's errors, a body that is not
# JSON (the SDK's json.loads: ValueError, or RecursionError for JSON nested deeper than
# the parser recurses, e.g. 100 KB of "[", which failed the call with INTERNAL), the
# call's deadline (asyncio.timeout_at).
UPSTREAM_ERRORS = (openai.OpenAIError, ValueError, RecursionError, TimeoutError)


class UpstreamFault(Exception):
    """One failed upstream attempt.

    kind: ``http`` (a non-2xx status), ``connection`` (refused, reset, cut short),
    ``timeout`` (the call's deadline passed), ``first_byte_timeout`` (the provider's
    ``first_byte_timeout`` passed before its answer began), ``bad_response`` (not the protocol),
    ``stream_error`` (an error event inside a stream), ``read_timeout`` (a stream went silent
    past the read timeout mid-answer), ``missing_key`` (no API key for a
    provider that needs one), ``refused`` (a caller's base URL refused at connect time),
    ``limit_wait`` (the provider's limits need a longer wait than the deadline leaves),
    ``queue_timeout`` (the deadline passed while waiting for them).
    """

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.retryable = retryable
        self.attempts = 0
        # Seconds the call waited for the provider's limits, retries' waits included.
        self.waited = 0.0

    @property
    def cause(self) -> str:
        """A label for logs and metrics: the HTTP status, else the kind."""
        return str(self.status) if self.status is not None else self.kind


def fault_from_error(err: BaseException) -> UpstreamFault:
    """The fault behind an exception from one of ``UPSTREAM_ERRORS``."""
    if isinstance(err, openai.APIStatusError):
        message, code = _error_fields(err.body)
        return UpstreamFault(
            "http",
            message,
            status=err.status_code,
            code=code if code is not None else err.code,
            retry_after=server_wait(err),
            retryable=is_transient(err),
        )
    big = too_large(err)
    if big is not None:  # GENSEARCH_GENERATION_MAX_RESPONSE_BYTES; not retried
        return UpstreamFault("bad_response", f"{big} (GENSEARCH_GENERATION_MAX_RESPONSE_BYTES)")
    refused = refusal(err)
    if refused is not None:
        # A caller's base URL refused at connect time (a name that resolved to an address
        # the operator has not allowed: DNS rebinding, or simply localhost). Not retried.
        return UpstreamFault("refused", refused.why)
    if isinstance(err, openai.APIConnectionError):
        return UpstreamFault("connection", _root_cause(err), retryable=True)
    if isinstance(err, openai.APIError):  # an error event inside a stream
        return UpstreamFault("stream_error", err.message)
    if isinstance(err, TimeoutError):
        return UpstreamFault("timeout")
    return UpstreamFault("bad_response", "the body is not JSON")


def _error_fields(body: object) -> tuple[str, str | None]:
    """Message and code of an error body: the SDK hands over OpenAI's ``error`` object, or
    the flat variants vLLM and others send, or the raw text."""
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail") or ""
        code = body.get("code")
        return str(message), (str(code) if code is not None else None)
    # Whole: cut here, a secret at the cut was shown in part (_clean cuts it safely).
    return ("" if body is None else str(body)), None


# What the transport's commonest failures mean, said to a caller or operator who does not
# know Python's exception names; the name follows in parentheses for searching the logs.
_PLAIN_CAUSES = {
    "gaierror": "its host name did not resolve",
    "ConnectionRefusedError": "the connection was refused (nothing listens there)",
    "ConnectionResetError": "the connection was reset",
    "ServerDisconnectedError": "it closed the connection before answering",
    "ClientConnectorCertificateError": "its TLS certificate was not trusted",
    "ClientConnectorSSLError": "the TLS handshake failed",
    "ClientSSLError": "the TLS handshake failed",
}


def _root_cause(err: BaseException) -> str:
    """What the transport's own exception means (the SDK's message is only "Connection
    error."), with its name: e.g. "its host name did not resolve (gaierror)"."""
    while err.__cause__ is not None:
        err = err.__cause__
    name = type(err).__name__
    plain = _PLAIN_CAUSES.get(name)
    return f"{plain} ({name})" if plain else name


def _mentions_model(fault: UpstreamFault) -> bool:
    if fault.code == "model_not_found":
        return True
    return fault.status == 404 and "model" in fault.detail.lower()


# Faults of our own making (no HTTP status): the error, its reason and its message, with
# {provider}, {tries} (" after N attempts"), {detail} and {clean} (the detail, tidied).
_BY_KIND: dict[str, tuple[type[ServiceError], str, str]] = {
    "timeout": (
        DeadlineExceeded,
        "UPSTREAM_TIMEOUT",
        "provider {provider!r} did not answer within the deadline{tries}",
    ),
    "limit_wait": (
        ResourceExhausted,
        "PROVIDER_LIMIT_WAIT",
        "provider {provider!r} is at its limits: {detail}",
    ),
    "queue_timeout": (
        DeadlineExceeded,
        "PROVIDER_QUEUE_TIMEOUT",
        "provider {provider!r}: {detail}",
    ),
    "first_byte_timeout": (
        DeadlineExceeded,
        "UPSTREAM_FIRST_BYTE_TIMEOUT",
        "provider {provider!r} did not answer within its first-byte timeout{tries}",
    ),
    "bad_response": (
        Unavailable,
        BAD_UPSTREAM_RESPONSE,
        "provider {provider!r} sent a malformed response: {clean}",
    ),
    "connection": (
        Unavailable,
        "UPSTREAM_CONNECTION_FAILED",
        "could not reach provider {provider!r}{tries}: {clean}",
    ),
    "read_timeout": (
        Unavailable,
        "UPSTREAM_READ_TIMEOUT",
        "provider {provider!r} sent nothing for longer than GENSEARCH_GENERATION_READ_TIMEOUT"
        "{tries}: {clean}",
    ),
    "stream_error": (
        Unavailable,
        "UPSTREAM_STREAM_ERROR",
        "provider {provider!r} failed mid-stream: {clean}",
    ),
}


def _clean(detail: str) -> str:
    # Redacted before blanks are collapsed: a secret split across lines is found whole.
    if len(detail) <= _QUOTED_WINDOW:
        text = " ".join(redact(detail).split())
        return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
    text = " ".join(redact(detail[:_QUOTED_WINDOW]).split())
    if len(text) < _MAX_MESSAGE + _CUT_MARGIN:
        # Blanks or redactions shrank the window so far that its cut end (perhaps a part
        # of a secret) would be among what is shown.
        return f"(a message of {len(detail)} characters, not shown)"
    return text[: _MAX_MESSAGE - 1] + "…"


def to_service_error(
    fault: UpstreamFault, provider: str, model: str, *, caller_url: bool = False
) -> ServiceError:
    """The status our caller gets for an upstream fault that retries did not cure.
    ``caller_url``: the provider was called at the request's own ``base_url``."""
    # A refused connection (a caller's URL resolving to an address not allowed) is decided
    # before a byte is sent: that attempt is no upstream call, and a caller charging calls
    # (the gateway's quota, from ``upstream_calls``) must not count it.
    attempts = max(0, fault.attempts - 1) if fault.kind == "refused" else fault.attempts
    meta = {
        "provider": provider,
        ATTEMPTS: str(attempts),
        WAIT_MS: str(round(fault.waited * 1000)),
    }
    if fault.status is not None:
        meta["upstream_status"] = str(fault.status)
    if fault.retry_after is not None:
        meta["retry_after_ms"] = str(round(fault.retry_after * 1000))
    tries = f" after {fault.attempts} attempts" if fault.attempts > 1 else ""
    status = fault.status
    if fault.kind == "refused":
        return url_not_allowed(
            "base_url", fault.detail, ALLOWLIST_SETTING, then="; nothing was sent", metadata=meta
        )
    if fault.kind == "missing_key":
        # The field is the header the caller may send the key in (as the message says).
        return Unauthenticated(
            fault.detail,
            field=f"x-{provider}-api-key",
            reason="MISSING_PROVIDER_API_KEY",
            metadata=meta,
        )
    by_kind = _BY_KIND.get(fault.kind)
    if by_kind is not None:
        error, reason, text = by_kind
        message = text.format(
            provider=provider, tries=tries, detail=fault.detail, clean=_clean(fault.detail)
        )
        return error(message, reason=reason, metadata=meta)
    # Upstream HTTP statuses. 401/403 bodies are not echoed: they may quote the key.
    if status == 401:
        return Unauthenticated(
            f"provider {provider!r} rejected the API key (HTTP 401): send metadata "
            f"'x-{provider}-api-key' or set the provider's key variable",
            reason="UPSTREAM_UNAUTHENTICATED",
            metadata=meta,
        )
    if status == 403:
        return PermissionDenied(
            f"provider {provider!r} refused access (HTTP 403)",
            reason="UPSTREAM_PERMISSION_DENIED",
            metadata=meta,
        )
    if status == 429:
        return ResourceExhausted(
            f"provider {provider!r} is rate limiting (HTTP 429){tries}"
            + (
                f" and asks to wait {fault.retry_after:.1f} s, longer than this call may"
                # Not a wait of 0 (a "0" or negative Retry-After): that is no longer than
                # anything, the call simply ran out of time retrying.
                if fault.retry_after
                else ""
            ),
            reason="UPSTREAM_RATE_LIMITED",
            metadata=meta,
        )
    if _mentions_model(fault):
        return InvalidArgument(
            f"unknown model {quote(model)} for provider {provider!r}",
            field="model",
            reason="UNKNOWN_MODEL",
            metadata=meta,
        )
    if status is not None and 300 <= status < 400:
        # Redirects are never followed: the next address was not checked against the
        # allowlist, and the operator's key would go there.
        said = (
            f"provider {provider!r} answered with a redirect (HTTP {status}), which is not "
            "followed: "
        )
        if caller_url:  # the request's own base_url: the caller can fix it
            return FailedPrecondition(
                f"base_url: {said}base_url must name the final address",
                field="base_url",
                reason=UPSTREAM_REDIRECT,
                metadata=meta,
            )
        return FailedPrecondition(
            said + "its base_url must name the final address",
            reason=UPSTREAM_REDIRECT,
            metadata=meta,
        )
    if status == 404:
        return FailedPrecondition(
            f"provider {provider!r} has no chat completions endpoint at its base_url (HTTP 404)",
            reason="UPSTREAM_NOT_FOUND",
            metadata=meta,
        )
    if status is not None and 400 <= status < 500:
        return InvalidArgument(
            f"provider {provider!r} rejected the request (HTTP {status}): {_clean(fault.detail)}",
            reason="UPSTREAM_REJECTED_REQUEST",
            metadata=meta,
        )
    return Unavailable(
        f"provider {provider!r} failed (HTTP {status}){tries}",
        reason="UPSTREAM_UNAVAILABLE",
        metadata=meta,
    )
