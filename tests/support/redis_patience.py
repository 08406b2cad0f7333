"""The Redis timeouts test stacks give the gateway and generation services.

Both services fail open when Redis is late: a quota admits the call, a shared provider
limit counts only this replica, a cache read is a miss and a write is dropped. Their
default socket timeout (0.5 s) is right for production, but on a loaded 2-core CI machine
a reply from the local Redis can come later than that, and a test then silently counts
one call more or one refusal less. Stacks that do not test a slow or absent Redis give it
these instead; a test of a Redis outage or timeout opts out and keeps the services' own
defaults (``production_redis_timeouts=True`` in the stack fixtures)."""

from __future__ import annotations

from typing import Any

PATIENT_REDIS: dict[str, Any] = {"redis_socket_timeout": 5.0, "redis_connect_timeout": 5.0}


def redis_timeouts(*, production: bool) -> dict[str, Any]:
    """The timeout settings a test stack starts with (a test's own settings win):
    ``PATIENT_REDIS``, or none (the services' defaults) for an outage or timeout test."""
    return {} if production else dict(PATIENT_REDIS)
