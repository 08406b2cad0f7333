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


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        # Before: "UNAVAILABLE: errors resolving http://localhost:50050: [field:hostname
        # lookup error:address lookup failed for http://localhost:50050: Misformatted
        # domain name]" (the TypeScript client's GENSEARCH_URL is such a URL).
        (
            ["--address", "http://localhost:50050"],
            None,
            "error: --address takes HOST:PORT, not a URL: localhost:50050 rather than "
            "http://localhost:50050",
        ),
        (
            [],
            "https://gateway.example.com/",
            "error: --address (GENSEARCH_ADDRESS) takes HOST:PORT, not a URL: "
            "gateway.example.com:PORT rather than https://gateway.example.com/",
        ),
        # Before: "UNAVAILABLE: cannot reach the gateway at localhost" (gRPC tried 443).
        (
            ["--address", "localhost"],
            None,
            "error: --address 'localhost' has no port: give HOST:PORT, e.g. localhost:50050",
        ),
    ],
)
def test_an_address_that_is_no_grpc_target_is_a_usage_mistake(
    argv: list[str],
    env: str | None,
    expected: str,
    cli_alone: CliAlone,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GENSEARCH_API_KEY", raising=False)
    if env is None:
        monkeypatch.delenv("GENSEARCH_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("GENSEARCH_ADDRESS", env)
    result = cli_alone([*argv, "collections", "list"])
    assert result.code == 2
    assert result.err.splitlines() == [expected]
