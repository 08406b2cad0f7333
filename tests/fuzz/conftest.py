"""The whole stack on loopback, as the gateway tests build it."""

from tests.gateway.conftest import (  # noqa: F401 (the fixtures)
    fake,
    shared_redis,
    stack,
    stack_embedder,
    stack_factory,
)
