"""The README's main flow as a Python program under 30 lines, run against the real stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gensearch.client
from gensearch.client import Gensearch

from tests.cli.conftest import RunningStack

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "clients" / "python" / "examples" / "readme_flow.py"


def test_the_example_is_under_30_lines() -> None:
    assert len(EXAMPLE.read_text().splitlines()) < 30


def test_the_readme_flow_runs_through_the_client(running_stack: RunningStack) -> None:
    with Gensearch(running_stack.address) as client:
        if client.collections.exists("Books"):  # the README walk-through's
            client.collections.delete("Books")
    # The program imports gensearch.client exactly as this test process does.
    client_root = Path(gensearch.client.__file__).resolve().parents[2]
    path = os.pathsep.join([str(client_root), *sys.path])
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), running_stack.address],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "imported 3" in out
    # Integers come back as integers (the schema says int), filtered by year < 1970.
    assert "hit: Dune 1965" in out and "hit: Foundation 1951" in out
    assert "Neuromancer 1984" not in out.split("teaser:")[0]
    assert out.count("teaser: ") == 3 and "[" not in out.split("grouped:")[0].split("teaser:")[1]
    assert "grouped: " in out
    # Two turns of one conversation (the second continued the first).
    conversation = next(line for line in out.splitlines() if line.startswith("conversation: "))
    assert conversation.endswith(" True") and len(conversation.split()) == 3
    assert "turn 2: " in out
    # Both turns landed in one conversation.
    fake_questions = [r.json["messages"][-1]["content"] for r in running_stack.fake.chat_requests]
    assert any("When was it written?" in q for q in fake_questions)
