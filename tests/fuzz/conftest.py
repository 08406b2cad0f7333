"""The whole stack on loopback, as the gateway tests build it."""

from tests.gateway.conftest import fake, shared_redis, stack, stack_factory  # noqa: F401
