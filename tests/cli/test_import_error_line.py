"""An import that fails before any object lands prints its error as the only line on
stderr: the progress bar it had started is cleared, not left behind as an empty line
(before this, ``gensearch import books.jsonl -c Nope`` printed a blank line, then the error)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import CliAlone


def test_a_failed_import_leaves_no_blank_line(
    cli_alone: CliAlone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GENSEARCH_API_KEY", raising=False)
    books = tmp_path / "books.jsonl"
    books.write_text('{"title": "Emma", "year": 1815}\n')
    captured = cli_alone(
        ["--address", "127.0.0.1:1", "import", str(books), "--collection", "Books"]
    )
    assert captured.code == 1
    assert captured.out == ""
    assert captured.err.startswith("error: UNAVAILABLE: cannot reach the gateway"), captured.err
    assert captured.err.count("\n") == 1, repr(captured.err)
