"""The Redis timeouts test stacks give the services (the gateway and generation above all).

Both services fail open when Redis is late: a quota admits the call, a shared provider
limit counts only this replica, a cache read is a miss and a write is dropped. Their
default socket timeout (0.5 s) is right for production, but on a loaded 2-core CI machine
a reply from the local Redis can come later than that, and a test then silently counts
one call more or one refusal less. (Memory waits 2 s, then fails the call: as flaky.)
Stacks that do not test a slow or absent Redis give it these instead; a test of a Redis
outage or timeout opts out and keeps the services' own defaults
(``production_redis_timeouts=True`` in the stack fixtures).

Stacks built from settings objects take ``redis_timeouts``/``PATIENT_REDIS``; stacks that
read their settings from the environment (``gensearch up``'s, tests/cli) take
``patient_redis_env``."""

from __future__ import annotations

from typing import Any

from services.common.settings import NAMESPACES

PATIENT_REDIS: dict[str, Any] = {"redis_socket_timeout": 5.0, "redis_connect_timeout": 5.0}


def redis_timeouts(*, production: bool) -> dict[str, Any]:
    """The timeout settings a test stack starts with (a test's own settings win):
    ``PATIENT_REDIS``, or none (the services' defaults) for an outage or timeout test."""
    return {} if production else dict(PATIENT_REDIS)


def patient_redis_env() -> dict[str, str]:
    """``PATIENT_REDIS`` as environment variables, in the namespace of every service that
    has them (``GENSEARCH_GATEWAY_REDIS_SOCKET_TIMEOUT``, ...)."""
    return {
        f"{NAMESPACES[service]}{name.upper()}": str(value)
        for service in ("gateway", "generation", "memory")
        for name, value in PATIENT_REDIS.items()
    }
