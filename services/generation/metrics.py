"""Prometheus metrics of upstream LLM calls (the chassis counts the gRPC side).

Every label takes its values from a fixed set (docs/operations.md lists them): each
distinct value is a series Prometheus keeps, and nothing a caller or a provider chooses may
add series without bound. ``provider`` is a configured provider's name (a request's
``base_url`` counts under the provider it names; an unknown name is refused before any
call); models, tenants, keys and URLs are no label. The upstream's HTTP status is the one
label value a provider chooses: ``outcome_label`` maps it into a fixed set.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# HTTP statuses counted as themselves in ``outcome`` / ``cause``: those OpenAI-compatible
# servers answer and an operator acts on. Any other status counts as its class (``4xx``,
# ``5xx``) or ``other``: a provider (or a caller's base_url) answering statuses 100 to 999
# made up to 900 series per provider and metric.
HTTP_STATUSES = frozenset({400, 401, 403, 404, 408, 409, 413, 422, 429, 500, 502, 503, 504})
# UpstreamFault kinds (services/generation/upstream.py) other than ``http``.
FAULT_KINDS = frozenset(
    {
        "connection",
        "timeout",
        "first_byte_timeout",
        "bad_response",
        "stream_error",
        "missing_key",
        "refused",
        "limit_wait",
        "queue_timeout",
    }
)
OTHER = "other"
# Every value ``outcome_label`` returns (``ok`` is a success's outcome).
OUTCOMES = frozenset(
    {"ok", "4xx", "5xx", OTHER, *FAULT_KINDS, *(str(status) for status in HTTP_STATUSES)}
)


def outcome_label(cause: str) -> str:
    """The label of a fault's ``cause`` (an HTTP status or a fault kind): itself when in the
    fixed sets above, else ``4xx`` / ``5xx`` for a status of those classes, else ``other``."""
    if cause.isdigit():
        status = int(cause)
        if status in HTTP_STATUSES:
            return cause
        if 400 <= status < 600:
            return f"{status // 100}xx"
        return OTHER
    return cause if cause in FAULT_KINDS else OTHER


UPSTREAM_REQUESTS = Counter(
    "gensearch_llm_requests_total",
    "Finished upstream LLM exchanges (retries included) by provider and outcome.",
    ["provider", "outcome"],
)
UPSTREAM_RETRIES = Counter(
    "gensearch_llm_retries_total",
    "Upstream attempts retried, by provider and cause (HTTP status or fault kind).",
    ["provider", "cause"],
)
UPSTREAM_TOKENS = Counter(
    "gensearch_llm_tokens_total",
    "Tokens used upstream (estimated when the provider reports none).",
    ["provider", "kind"],
)
TIME_TO_FIRST_TOKEN = Histogram(
    "gensearch_llm_time_to_first_token_seconds",
    "Time from the start of a streamed exchange to its first text delta.",
    ["provider"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
FALLBACKS = Counter(
    "gensearch_llm_fallbacks_total",
    "Calls that moved on to the next pair of their fallback chain, by the provider that "
    "failed and the status it failed with.",
    ["provider", "status"],
)
FALLBACK_SKIPS = Counter(
    "gensearch_llm_fallback_skips_total",
    "Pairs of a call's chain (the primary included) skipped when the call was planned, "
    "their limits unable to hold it, by provider and reason (CONTEXT_WINDOW_EXCEEDED, "
    "PROVIDER_TOKEN_LIMIT_EXCEEDED).",
    ["provider", "reason"],
)
INVALID_OUTPUTS = Counter(
    "gensearch_llm_invalid_outputs_total",
    "Answers that did not match the request's JSON schema, by provider and whether it was "
    "the first answer (then corrected once) or the corrective retry's (then an error).",
    ["provider", "attempt"],
)
CONCURRENCY_LIMIT = Gauge(
    "gensearch_llm_concurrency_limit",
    "Calls to a provider this replica lets run at once (adaptive, AIMD; +Inf: no limit).",
    ["provider"],
)
IN_FLIGHT = Gauge(
    "gensearch_llm_in_flight",
    "Calls to a provider running now in this replica.",
    ["provider"],
)
QUEUE_WAIT = Histogram(
    "gensearch_llm_queue_wait_seconds",
    "Time an attempt waited for the provider's limits before it started.",
    ["provider"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
