"""Ctrl-C during `gensearch import`: it says what is surely written and where to resume.

Before, the import said only `error: interrupted`: the user could not tell what had been
written, nor resume without sending everything again.
"""

from __future__ import annotations

import io
import json
import re
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from gensearch.client import Gensearch

from tests.cli.conftest import RunningStack

INTERRUPT_AT_LINE = 12  # with streams of 5 objects, the third stream is under way


class InterruptedInput(io.StringIO):
    """Stdin of JSON lines whose reader gets a real SIGINT (Ctrl-C) as it reads one line:
    asyncio.run cancels the import then, as in a terminal."""

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self.getvalue().splitlines(keepends=True), start=1):
            if number == INTERRUPT_AT_LINE:
                signal.raise_signal(signal.SIGINT)
            yield line


def test_ctrl_c_mid_import_says_what_was_written_and_how_to_resume(
    cli: Any, running_stack: RunningStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"Interrupted{uuid.uuid4().hex[:8]}"
    cli("collections", "create", "--name", name, "--property", "n:int",
        "--vectorizer", "none", "--dimensions", "2")  # fmt: skip
    ids = [str(uuid.uuid4()) for _ in range(20)]
    lines = [
        json.dumps({"id": i, "properties": {"n": n}, "vector": [1, 0]}) for n, i in enumerate(ids)
    ]
    monkeypatch.setattr("sys.stdin", InterruptedInput("\n".join(lines) + "\n"))

    result = cli("import", "-", "--collection", name, "--batch-size", "5",
                 "--objects-per-call", "5")  # fmt: skip

    assert result.code == 130
    said = re.search(
        rf"interrupted: (\d+) objects imported into {name} for sure \(lines before (\d+)\); "
        r"lines from \2 on may be written in part .*; to resume, send the input from its "
        rf"line \2 on: \S*gensearch import - --collection {name}\n",
        result.err,
    )
    assert said, result.err
    imported, resume = int(said.group(1)), int(said.group(2))
    # What it says is written is: every line before the resume line, and nothing past the
    # line being read when Ctrl-C came.
    assert imported == resume - 1 and 5 <= imported < INTERRUPT_AT_LINE
    with Gensearch(running_stack.address) as client:
        stored = client.collections.get(name).data.get_many(ids[:imported])
        assert not stored.missing_ids and len(stored.objects) == imported
    assert result.err.endswith("error: interrupted\n")


def test_a_file_is_resumed_with_tail() -> None:
    import argparse

    from services.cli.importer import ImportResult, interrupted_line

    args = argparse.Namespace(file="my books.jsonl", collection="Books")
    said = interrupted_line(ImportResult(imported=1000, resume_line=1001), args)
    assert said.startswith(
        "interrupted: 1000 objects imported into Books for sure (lines before 1001); "
    )
    assert re.search(
        r"; to resume: tail -n \+1001 'my books\.jsonl' \| \S*gensearch import - "
        r"--collection Books$",
        said,
    ), said
    everything = interrupted_line(ImportResult(imported=3, resume_line=None), args)
    assert everything == (
        "interrupted: 3 objects imported into Books for sure; every line was acknowledged"
    )
