"""Prometheus metrics of upstream LLM calls (the chassis counts the gRPC side)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
