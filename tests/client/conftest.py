"""The client tests run against the same real stack as the CLI tests (the fake LLM)."""

from tests.cli.conftest import bytes_quota_gateway, quota_gateway, running_stack  # noqa: F401 (the fixtures)
