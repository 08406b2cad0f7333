"""Prometheus metrics of the retrieval service beyond the per-method ones
(services/common/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

READS_WAITING = Gauge(
    "gensearch_retrieval_reads_waiting",
    "Searches, BatchGetObjects and GetChunks waiting for room under "
    "GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT.",
)
READS_REFUSED = Counter(
    "gensearch_retrieval_reads_refused_total",
    "Searches, BatchGetObjects and GetChunks refused after waiting READ_BYTES_WAIT for room under "
    "GENSEARCH_RETRIEVAL_MAX_READ_BYTES_IN_FLIGHT_PER_TENANT.",
)
ENGINE_FLUSHES = Counter(
    "gensearch_retrieval_engine_flushes_total",
    "Flushes of a qdrant-edge collection's shard, by what asked for it: writes "
    "(GENSEARCH_RETRIEVAL_FLUSH_AFTER_OBJECTS), interval "
    "(GENSEARCH_RETRIEVAL_FLUSH_INTERVAL_SECONDS), "
    "optimize (a large import's end), index (a payload index built after open).",
    ["trigger"],
)
