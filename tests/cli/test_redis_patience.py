"""The `gensearch up` stack of the CLI and client tests gives Redis the test patience
(tests/support/redis_patience.py), as the gateway and generation test stacks do. It read
its settings from the environment alone, so its gateway and generation kept their 0.5 s
socket timeout: on a loaded machine a late quota or provider-limit reply failed open, and
a quota test (tests/client/test_readme_rate_limited.py) could see one call too many."""

from __future__ import annotations

import pytest

from tests.cli.conftest import RunningStack
from tests.support.redis_patience import PATIENT_REDIS


@pytest.mark.parametrize("part", ["gateway", "generation", "memory"])
def test_the_cli_stacks_services_wait_for_redis_as_test_stacks_do(
    running_stack: RunningStack, part: str
) -> None:
    settings = running_stack.stack.parts[part].server.settings.model_dump()
    # Their Redis is the stack's own: this is the client they count in.
    assert settings["redis_url"].get_secret_value()
    for name, patient in PATIENT_REDIS.items():
        assert settings[name] == patient, (part, name)
