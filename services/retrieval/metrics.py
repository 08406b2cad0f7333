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
