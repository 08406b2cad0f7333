"""`gensearch status` with no gateway at the address: one error line, as every command.

Before, the health probe's row and each service's row checked through the gateway (three
forwarded calls, each retried by the client) all said "cannot reach the gateway", after
the retries' backoff; now the health probe (no retries) finds it once and nothing else is
tried. No stack: nothing listens on 127.0.0.1:1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import CliAlone
from tests.cli.test_commands import one_error_line

UNREACHABLE = (
    "error: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:1 "
    "(is `gensearch up` running? set --address or GENSEARCH_ADDRESS)"
)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_status_of_an_unreachable_gateway_is_one_line(
    json_flag: list[str],
    cli_alone: CliAlone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path))  # no stack.json of an `up`
    monkeypatch.delenv("GENSEARCH_API_KEY", raising=False)
    for part in ("MEMORY", "RETRIEVAL", "GENERATION"):
        monkeypatch.delenv(f"GENSEARCH_GATEWAY_{part}_ADDR", raising=False)
    captured = cli_alone(["--address", "127.0.0.1:1", "status", *json_flag])
    assert captured.code == 1  # docs/cli.md: 1 for an error, or a part that is down
    assert captured.out == ""  # no table (or JSON) of rows that all say the same
    assert one_error_line(captured.err) == UNREACHABLE
