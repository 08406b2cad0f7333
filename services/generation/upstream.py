"""Upstream faults, and what each becomes for our caller.

Adapters describe what went wrong with an ``UpstreamFault`` (an HTTP status, a dropped
connection, a deadline, a malformed answer); the retry loop decides on it; whatever is left
becomes a ``ServiceError`` here, in one table. Messages name the provider, never the key,
and upstream 401/403 bodies are never echoed (some quote part of the key).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
    Unavailable,
)
from services.common.logs import redact

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
BAD_UPSTREAM_RESPONSE = "BAD_UPSTREAM_RESPONSE"
_MAX_MESSAGE = 300


class UpstreamFault(Exception):
    """One failed upstream attempt.

    kind: ``http`` (a non-2xx status), ``connection`` (refused, reset, cut short),
    ``timeout`` (the call's deadline passed), ``bad_response`` (not the protocol),
    ``missing_key`` (no API key for a provider that needs one).
    """

    def __init__(
        self,
        kind: str,
        detail: str = "",
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(detail or kind)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.attempts = 0
        if retryable is None:
            retryable = kind == "connection" or (kind == "http" and status in RETRYABLE_STATUS)
        self.retryable = retryable


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP-date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("Retry-After") or headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def fault_from_response(status: int, headers: Mapping[str, str], raw: bytes) -> UpstreamFault:
    message, code = _error_fields(raw)
    return UpstreamFault(
        "http",
        message,
        status=status,
        code=code,
        retry_after=parse_retry_after(headers),
    )


def _error_fields(raw: bytes) -> tuple[str, str | None]:
    """The message and code of an OpenAI-style error body (``{"error": {...}}``), or of the
    flat variants vLLM and others send."""
    try:
        data: Any = json.loads(raw)
    except ValueError:
        return raw[:_MAX_MESSAGE].decode("utf-8", "replace").strip(), None
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or ""
        code = err.get("code")
        return str(message), (str(code) if code is not None else None)
    return str(err), None


def _mentions_model(fault: UpstreamFault) -> bool:
    if fault.code == "model_not_found":
        return True
    return fault.status == 404 and "model" in fault.detail.lower()


def _clean(detail: str) -> str:
    text = redact(" ".join(detail.split()))
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def to_service_error(fault: UpstreamFault, provider: str, model: str) -> ServiceError:
    """The status our caller gets for an upstream fault that retries did not cure."""
    meta = {"provider": provider, "attempts": str(fault.attempts)}
    if fault.status is not None:
        meta["upstream_status"] = str(fault.status)
    tries = f" after {fault.attempts} attempts" if fault.attempts > 1 else ""
    status = fault.status
    if fault.kind == "missing_key":
        return Unauthenticated(fault.detail, reason="MISSING_PROVIDER_API_KEY", metadata=meta)
    if fault.kind == "timeout":
        return DeadlineExceeded(
            f"provider {provider!r} did not answer within the deadline{tries}",
            reason="UPSTREAM_TIMEOUT",
            metadata=meta,
        )
    if fault.kind == "bad_response":
        return Unavailable(
            f"provider {provider!r} sent a malformed response: {_clean(fault.detail)}",
            reason=BAD_UPSTREAM_RESPONSE,
            metadata=meta,
        )
    if fault.kind == "connection":
        return Unavailable(
            f"could not reach provider {provider!r}{tries}: {_clean(fault.detail)}",
            reason="UPSTREAM_CONNECTION_FAILED",
            metadata=meta,
        )
    if fault.kind == "stream_error":
        return Unavailable(
            f"provider {provider!r} failed mid-stream: {_clean(fault.detail)}",
            reason="UPSTREAM_STREAM_ERROR",
            metadata=meta,
        )
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
            f"provider {provider!r} is rate limiting (HTTP 429){tries}",
            reason="UPSTREAM_RATE_LIMITED",
            metadata=meta,
        )
    if _mentions_model(fault):
        return InvalidArgument(
            f"unknown model {model!r} for provider {provider!r}",
            field="model",
            reason="UNKNOWN_MODEL",
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
