"""The client tests run against the same real stack as the CLI tests (the fake LLM);
test_gateway_restart.py runs a gateway process in front of tests/gateway's services."""

from tests.cli.conftest import (  # noqa: F401 (the fixtures)
    bytes_quota_gateway,
    quota_gateway,
    running_stack,
    shared_list,
)
from tests.gateway.conftest import fake, shared_redis, stack_factory  # noqa: F401 (the fixtures)
from tests.support.gateway_process import gateway_process  # noqa: F401 (the fixture)
