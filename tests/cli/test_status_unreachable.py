"""`gensearch status` with no gateway at the address: one error line, as every command.

Before, the health probe's row and each service's row checked through the gateway (three
forwarded calls, each retried by the client) all said "cannot reach the gateway", after
the retries' backoff; now the health probe (no retries) finds it once and nothing else is
tried. No stack: nothing listens on 127.0.0.1:1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cli.__main__ import main
from tests.cli.test_commands import one_error_line

UNREACHABLE = (
    "error: UNAVAILABLE: cannot reach the gateway at 127.0.0.1:1 "
    "(is `gensearch up` running? set --address or GENSEARCH_ADDRESS)"
)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_status_of_an_unreachable_gateway_is_one_line(
    json_flag: list[str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path))  # no stack.json of an `up`
    monkeypatch.setenv("GENSEARCH_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("GENSEARCH_API_KEY", raising=False)
    for part in ("MEMORY", "RETRIEVAL", "GENERATION"):
        monkeypatch.delenv(f"GENSEARCH_GATEWAY_{part}_ADDR", raising=False)
    code = main(["--address", "127.0.0.1:1", "status", *json_flag])
    captured = capsys.readouterr()
    assert code == 1  # docs/cli.md: 1 for an error, or a part that is down
    assert captured.out == ""  # no table (or JSON) of rows that all say the same
    assert one_error_line(captured.err) == UNREACHABLE
