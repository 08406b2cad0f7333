"""Prometheus metrics of the memory service beyond the per-method ones
(services/common/metrics.py) and Redis errors (services/common/redis_errors.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

# Reasons an index job was not queued (services/memory/indexer.py): a fixed set.
OUTBOX_FULL = "outbox_full"
TENANT_SHARE = "tenant_share"

SEARCH_JOBS_DROPPED = Counter(
    "gensearch_memory_search_jobs_dropped_total",
    "Search index jobs the outbox refused (GENSEARCH_MEMORY_SEARCH_OUTBOX_MAX_JOBS, "
    "GENSEARCH_MEMORY_SEARCH_OUTBOX_JOBS_PER_TENANT): kept for no drain. One written ahead "
    "still runs from its replica's memory when a running slot is free, else it is dropped, "
    "as is one to retry; the sweep catches up.",
    ["reason"],
)

# The deletions' resume (services/memory/deletions.py): what is marked, what it finished.
DELETIONS_PENDING = Gauge(
    "gensearch_memory_deletions_pending",
    "DeleteConversation deletions marked in Redis (P:{deletes}:pending): under way, or "
    "interrupted and not finished yet; read by each replica's resume loop every "
    "GENSEARCH_MEMORY_DELETE_RESUME_SECONDS.",
)
DELETIONS_RESUMED = Counter(
    "gensearch_memory_deletions_resumed_total",
    "Interrupted DeleteConversation deletions this replica's resume loop finished.",
)
