"""Prometheus metrics of the memory service beyond the per-method ones
(services/common/metrics.py) and Redis errors (services/common/redis_errors.py)."""

from __future__ import annotations

from prometheus_client import Counter

# Reasons an index job was not queued (services/memory/indexer.py): a fixed set.
OUTBOX_FULL = "outbox_full"
TENANT_SHARE = "tenant_share"

SEARCH_JOBS_DROPPED = Counter(
    "gensearch_memory_search_jobs_dropped_total",
    "Search index jobs the outbox refused (GENSEARCH_MEMORY_SEARCH_OUTBOX_MAX_JOBS, "
    "GENSEARCH_MEMORY_SEARCH_OUTBOX_JOBS_PER_TENANT): left for the sweep.",
    ["reason"],
)
