"""The client tests run against the same real stack as the CLI tests (the fake LLM);
test_gateway_restart.py runs a gateway process in front of tests/gateway's services."""

from tests.cli.conftest import (  # noqa: F401 (the fixtures)
    bytes_quota_gateway,
    quota_gateway,
    running_stack,
    shared_list,
)
from tests.gateway.conftest import (  # noqa: F401 (the fixtures)
    fake,
    shared_redis,
    stack_embedder,
    stack_factory,
)
from tests.retrieval.conftest import (  # noqa: F401 (the fixtures)
    local_embedder,
    make_retrieval,
)
from tests.support.gateway_process import gateway_process  # noqa: F401 (the fixture)
