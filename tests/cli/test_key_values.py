"""A key the CLI cannot send as gRPC metadata (not printable ASCII, say a pasted `…`) is a
usage mistake, one line naming the flag, never the key; before this it was grpc core's
``ExecuteBatchError`` with a list of cygrpc objects and a core log line."""

from __future__ import annotations

import pytest

from tests.cli.conftest import CliAlone

SECRET = "sk-caf\u00e9\u2026"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--api-key", SECRET], "--api-key"),
        (["--llm-key", f"openai={SECRET}"], "--llm-key openai="),
    ],
)
def test_a_key_that_is_no_metadata_value_is_a_usage_mistake(
    argv: list[str],
    flag: str,
    cli_alone: CliAlone,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GENSEARCH_API_KEY", raising=False)
    result = cli_alone(["--address", "127.0.0.1:1", *argv, "collections", "list"])
    err = result.err
    assert result.code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {flag}")
    assert "printable ASCII" in err and SECRET not in err and "caf" not in err


def test_the_env_key_is_named_too(cli_alone: CliAlone, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENSEARCH_API_KEY", "two\nlines")
    result = cli_alone(["--address", "127.0.0.1:1", "collections", "list"])
    err = result.err
    assert result.code == 2 and err.startswith("error: --api-key (GENSEARCH_API_KEY)")
