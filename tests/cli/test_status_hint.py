"""The status command `up` suggests when it is up finds that stack's services: with a
--data-dir other than where `status` looks (GENSEARCH_DATA_DIR, else ./data) the line
names it, else `status` checked them through the gateway (UNAUTHENTICATED rows on a stack
with keys, exit code 1) or read another stack's stack.json."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from services.cli.admin import _stack_addresses
from services.cli.output import command_name
from services.cli.stack import status_hint

GATEWAY = "127.0.0.1:50160"


def test_another_data_dir_is_named_and_status_then_finds_the_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENSEARCH_DATA_DIR", raising=False)
    elsewhere = tmp_path / "my data"
    elsewhere.mkdir()
    parts = {"gateway": GATEWAY, "memory": "127.0.0.1:36603", "retrieval": "127.0.0.1:34247"}
    (elsewhere / "stack.json").write_text(json.dumps({"pid": 1, **parts}), encoding="utf-8")
    assert _stack_addresses(GATEWAY) == {}  # the command as printed before: not found

    words = shlex.split(status_hint(GATEWAY, elsewhere))
    name, _, value = words[0].partition("=")
    assert name == "GENSEARCH_DATA_DIR" and Path(value) == elsewhere
    assert words[-3:] == ["--address", GATEWAY, "status"]
    monkeypatch.setenv(name, value)
    assert _stack_addresses(GATEWAY) == {k: v for k, v in parts.items() if k != "gateway"}


def test_the_default_data_dir_needs_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENSEARCH_DATA_DIR", raising=False)
    plain = f"{command_name()} --address {GATEWAY} status"
    assert status_hint(GATEWAY, tmp_path / "data") == plain
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path / "kept"))
    assert status_hint(GATEWAY, tmp_path / "kept") == plain
