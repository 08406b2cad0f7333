"""``gensearch import`` of more objects than the tenant may write in a window completes at
the quota's pace, saying so as it waits (real stack, a gateway with a small quota)."""

from __future__ import annotations

import io
import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from services.cli.output import command_name
from tests.cli.conftest import QuotaGateway


def test_an_import_over_the_write_quota_waits_and_completes(
    cli: Any, tmp_path: Path, quota_gateway: QuotaGateway
) -> None:
    name = f"Quota_{uuid.uuid4().hex[:8]}"
    cli("collections", "create", "--name", name, "--property", "n:int",
        "--vectorizer", "none", "--dimensions", "2")  # fmt: skip
    rows: list[dict[str, Any]] = [
        {"properties": {"n": i}, "vector": [1, i / 100]} for i in range(25)
    ]
    rows[3]["properties"]["n"] = "three"  # rejected by the service: line 4
    rows[21]["properties"]["n"] = "twenty-one"  # line 22
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    quota_gateway.early_in_a_window(margin=6.0)
    result = cli(
        "import", str(path), "--collection", name, "--batch-size", "5",
        address=quota_gateway.address,
    )  # fmt: skip
    # Not an error part-way through: the import waited for the quota and finished.
    assert result.code == 2, result.err  # 2: some objects were rejected
    assert "QUOTA_EXCEEDED" not in result.err
    waiting = r"waiting \d+ s for the tenant's write quota \(10 objects a minute\)"
    assert re.search(waiting, result.err)
    summary = r"imported 23 objects into \S+ in [\d.]+s \([\d,]+ objects/s; \d+s of it waiting"
    assert re.search(summary, result.out)
    assert "2 failed" in result.out
    assert "line 4: " in result.err and "line 22: " in result.err
    shown = json.loads(cli("collections", "show", name, "--json").out)
    assert int(shown["object_count"]) == 23  # each object once


def test_no_wait_for_quota_stops_at_the_quota_and_says_where_to_resume(
    cli: Any, tmp_path: Path, quota_gateway: QuotaGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"QuotaStop_{uuid.uuid4().hex[:8]}"
    cli("collections", "create", "--name", name, "--property", "n:int",
        "--vectorizer", "none", "--dimensions", "2")  # fmt: skip
    rows: list[dict[str, Any]] = [
        {"properties": {"n": i}, "vector": [1, i / 100]} for i in range(25)
    ]
    rows[2]["properties"]["n"] = "two"  # rejected in the first stream: line 4 (after a blank)
    rows[7]["properties"]["n"] = "seven"  # rejected in the second stream, before the stop
    path = tmp_path / "stop.jsonl"
    path.write_text("\n" + "\n".join(json.dumps(r) for r in rows) + "\n")  # line 1 blank
    quota_gateway.early_in_a_window(margin=6.0)
    # Streams of 6 in messages of 3: the first stream whole, the second stopped at its
    # second message (6 + 3 + 3 > 10), after objects 6-8 (lines 8-10).
    result = cli(
        "import", str(path), "--collection", name, "--batch-size", "3",
        "--objects-per-call", "6", "--no-wait-for-quota", "--json",
        address=quota_gateway.address,
    )  # fmt: skip
    assert result.code == 3, result.err
    out = json.loads(result.out)
    assert (out["received"], out["imported"], out["failed"]) == (9, 7, 2)
    stopped = out["stopped_at_quota"]
    assert stopped["quota"] == "objects_written_per_minute" and stopped["limit"] == 10
    assert stopped["resume_line"] == 11 and 0 < stopped["retry_after_seconds"] <= 8
    # Both rejected lines with their reasons, the one in the stopped stream included.
    assert [(e["line"], e["field"]) for e in out["errors"]] == [
        (4, "properties.n"),
        (9, "properties.n"),
    ]
    assert all(e["message"] and "alone" not in e["message"] for e in out["errors"])
    shown = json.loads(cli("collections", "show", name, "--json").out)
    assert int(shown["object_count"]) == 7

    # The text form says the command that resumes; run in the next window, it sends the
    # rest from that line (through stdin, as tail would), and stops at the quota again.
    quota_gateway.early_in_a_window(margin=quota_gateway.window)  # the next window
    lines = path.read_text().splitlines(keepends=True)
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(lines[10:])))
    result = cli(
        "import", "-", "--collection", name, "--batch-size", "3", "--no-wait-for-quota",
        address=quota_gateway.address,
    )  # fmt: skip
    assert result.code == 3, result.err
    assert f"imported 9 objects into {name}" in result.out
    assert "stopped at the tenant's write quota (10 objects a minute); it frees in" in result.err
    # The command as the user runs it: `gensearch`, or the venv's script when not on PATH.
    assert f"to resume, send the input from its line 10 on: {command_name()} import - " in (
        result.err
    )
    shown = json.loads(cli("collections", "show", name, "--json").out)
    assert int(shown["object_count"]) == 16  # objects 9-17 once each, after the first 7
