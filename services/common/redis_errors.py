"""``gensearch_redis_errors_total``: Redis calls that failed, counted where each use of
Redis turns the failure into its answer (an error, a fallback, a miss).

Both labels come from fixed sets, never from the error's text (which names hosts, keys
and script lines): ``store`` is what Redis served (``STORES``), ``kind`` the class of the
failure (``KINDS``). Before, a failing Redis showed only as UNAVAILABLE counts of the
memory service and as log lines; the quotas, the shared rate limits and the generation
cache fall back or miss silently, so their Redis could be down for days unseen.
"""

from __future__ import annotations

from redis.exceptions import (
    AskError,
    ClusterError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.metrics import REDIS_ERRORS

STORES = ("memory", "quotas", "rate_limits", "generation_cache")
KINDS = ("connection", "timeout", "cluster", "refused", "other")


def kind(err: BaseException) -> str:
    """The class of a Redis failure (``KINDS``): unreachable or loading, too slow, the
    cluster's own (down, resharding, a slot moved), a write refused (a full Redis, a
    read-only replica), or anything else."""
    if isinstance(err, RedisTimeoutError | TimeoutError):
        return "timeout"
    # AttributeError: redis-py's cluster client closing a connection under a call
    # (services/common/redis_client.py, REDIS_FAILURES): a lost connection.
    if isinstance(err, RedisConnectionError | OSError | AttributeError):
        return "connection"
    if isinstance(err, ClusterError | RedisClusterException | TryAgainError | AskError):
        return "cluster"  # AskError: MOVED too (MovedError is one)
    if isinstance(err, OutOfMemoryError | ReadOnlyError) or str(err).startswith("OOM "):
        return "refused"
    return "other"


def count(store: str, err: BaseException) -> None:
    """One failed call of ``store`` (one of ``STORES``)."""
    REDIS_ERRORS.labels(store, kind(err)).inc()
