"""The rough edges a newcomer met (issue 16): --version, the progress bar, column order,
integers in --json, one state location. Against the real stack (see conftest)."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from gensearch.client import Gensearch
from gensearch.client.errors import InvalidArgumentError

from services.cli import importer, state
from services.cli.__main__ import main
from services.cli.client import Client, Connection
from services.cli.output import Progress
from tests.cli.conftest import RunningStack


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"gensearch {_installed_version()}"


def _installed_version() -> str:
    from services.cli.__main__ import version

    found = version()
    assert found and found[0].isdigit()
    return found


@pytest.fixture
def ordered(cli: Any, tmp_path: Path) -> str:
    """Properties in a non-alphabetical schema order, year an int."""
    name = f"Ordered_{uuid.uuid4().hex[:8]}"
    created = cli(
        "collections", "create", "--name", name, "--property", "zeta:text",
        "--property", "year:int", "--property", "alpha:text",
    )  # fmt: skip
    assert created.code == 0, created.err
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"alpha": "a desert story", "zeta": "Dune", "year": 1965}) + "\n")
    assert cli("import", str(path), "--collection", name).code == 0
    return name


def test_table_columns_follow_the_schema(cli: Any, ordered: str) -> None:
    result = cli("search", "-c", ordered, "--keyword", "desert")
    assert result.code == 0, result.err
    header, row = result.out.splitlines()[:2]
    assert header.split() == ["#", "SCORE", "ID", "ZETA", "YEAR", "ALPHA"]
    assert row.split()[3:5] == ["Dune", "1965"]
    # Asked-for properties keep the order asked.
    picked = cli("search", "-c", ordered, "--keyword", "desert", "--property", "alpha",
                 "--property", "zeta")  # fmt: skip
    assert picked.out.splitlines()[0].split() == ["#", "SCORE", "ID", "ALPHA", "ZETA"]


def test_json_prints_integers_as_integers(
    cli: Any, ordered: str, running_stack: RunningStack
) -> None:
    plain = cli("search", "-c", ordered, "--keyword", "desert", "--json")
    assert '"year": 1965' in plain.out and "1965.0" not in plain.out
    assert json.loads(plain.out)["hits"][0]["properties"]["year"] == 1965
    generated = cli("search", "-c", ordered, "--keyword", "desert", "--json",
                    "--single-prompt", "About {zeta}")  # fmt: skip
    assert generated.code == 0, generated.err
    assert '"year": 1965' in generated.out and "1965.0" not in generated.out
    streamed = cli("search", "-c", ordered, "--keyword", "desert", "--json", "--stream",
                   "--single-prompt", "About {zeta}")  # fmt: skip
    assert '"year": 1965' in streamed.out and "1965.0" not in streamed.out
    asked = cli("ask", "-c", ordered, "Which year?", "--no-memory", "--json")
    assert asked.code == 0, asked.err
    assert '"year": 1965' in asked.out and "1965.0" not in asked.out


class CountingProgress(Progress):
    def __init__(self, total: int | None) -> None:
        super().__init__(total)
        self.advances: list[int] = []

    def advance(self, count: int) -> None:
        self.advances.append(count)
        super().advance(count)


def test_the_import_progress_moves_with_every_batch(running_stack: RunningStack, cli: Any) -> None:
    """A 2,000-line file used to move the bar twice (once per 1,000-object stream)."""
    name = f"Progress_{uuid.uuid4().hex[:8]}"
    assert cli("collections", "create", "--name", name, "--property", "n:int",
               "--vectorizer", "none", "--dimensions", "2").code == 0  # fmt: skip
    lines = [json.dumps({"properties": {"n": i}, "vector": [1.0, float(i)]}) for i in range(2000)]
    progress = CountingProgress(len(lines))

    async def run() -> importer.ImportResult:
        async with Client(Connection(address=running_stack.address)) as client:
            return await importer.import_objects(client, name, lines, progress=progress)

    result = running_stack.loop.run(run())
    assert result.imported == 2000 and not result.errors
    assert len(progress.advances) == 20 and sum(progress.advances) == 2000
    assert progress.done == 2000


def test_ask_continues_the_demo_conversation_wherever_the_data_dir(
    cli: Any,
    running_stack: RunningStack,
    ordered: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`up --demo` remembers its conversation; a later `ask` (another shell: no
    GENSEARCH_DATA_DIR, `localhost` for the address) continues it."""
    monkeypatch.delenv("GENSEARCH_STATE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with Gensearch(running_stack.address) as client:
        demo_turn = client.collections.get(ordered).chat().ask("First question?")
    monkeypatch.setenv("GENSEARCH_DATA_DIR", str(tmp_path / "data"))  # as `up` ran
    state.LastConversation(None, running_stack.stack.gateway_address).set(demo_turn.conversation_id)
    monkeypatch.delenv("GENSEARCH_DATA_DIR")
    port = running_stack.address.rpartition(":")[2]
    asked = cli("ask", "-c", ordered, "And then?", "--json", address=f"localhost:{port}")
    assert asked.code == 0, asked.err
    assert json.loads(asked.out)["conversation_id"] == demo_turn.conversation_id
    assert (tmp_path / "home" / ".gensearch" / "last_conversation").exists()


def test_a_line_that_is_not_utf8_is_that_lines_error(tmp_path: Path) -> None:
    # One byte that is not UTF-8 ended the whole import with "error: UnicodeDecodeError:
    # 'utf-8' codec can't decode byte 0x9b in position 1: invalid start byte", naming no
    # line; it is that line's error, like a line that is not JSON.
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"t": "one"}\n{"t": "caf\xe9"}\n\xff\xfe\n{"t": "three"}\n')
    handle, total = importer.open_input(str(path))
    errors: list[importer.LineError] = []
    with handle:
        read = [
            (number, obj.properties["t"]) for number, obj in importer.read_objects(handle, errors)
        ]
    assert total == 4
    assert read == [(1, "one"), (4, "three")]
    assert [(e.line, e.message) for e in errors] == [
        (2, "not UTF-8 text"),
        (3, "not UTF-8 text"),
    ]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        # Past int32: the protobuf library's "ValueError: Value out of range: 9999…".
        (
            ["search", "-c", "Books", "--keyword", "x", "--limit", "99999999999999999999"],
            "argument --limit: 99999999999999999999 is not an integer from -2147483648 to "
            "2147483647",
        ),
        (
            ["ask", "-c", "Books", "q", "--context-size", "3000000000"],
            "argument --context-size: 3000000000 is not an integer from",
        ),
        # A deadline of 0, a negative or NaN: every call "took longer than its deadline".
        (["--timeout", "0", "collections", "list"], "argument --timeout: 0 is not a positive"),
        (["collections", "list", "--timeout", "nan"], "argument --timeout: nan is not a positive"),
        (["collections", "list", "--timeout", "-5"], "argument --timeout: -5 is not a positive"),
    ],
)
def test_a_number_no_call_can_take_is_a_usage_error(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--address", "127.0.0.1:1", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {says}"), err
    assert err.count("\n") == 1


def test_the_progress_rate_counts_until_the_import_is_done(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The bar advances as batches go out; the last one may then sit in the server for
    seconds. The final line's rate and time stopped at the last advance: the demo's bar
    said "40/40 passages 1,373 passages/s 0:00:00" above "imported 40 passages in 2.9s
    (13.6 passages/s)". Both now run to finish(), as the summary does."""
    progress = Progress(2, label="importing", unit="objects")
    progress.advance(2)  # every object sent ...
    time.sleep(0.5)  # ... and the server still at work on them
    progress.finish()
    final = capsys.readouterr().err
    rate = float(re.search(r"([\d,.]+) objects/s", final)[1].replace(",", ""))  # type: ignore[index]
    assert rate <= 4, final  # 2 objects over at least 0.5 s


HOSTILE = "\x1b]0;owned\x07\x1b[31mRed\x1b[0m\rOver\x9b2J"


def test_control_characters_in_data_never_reach_the_terminal(
    cli: Any, running_stack: RunningStack, tmp_path: Path
) -> None:
    """A stored value (anyone with write access in the tenant wrote it; a model wrote the
    answers) went to the terminal raw: ESC sequences retitled the window and coloured the
    table, a carriage return overwrote it. Shown visibly now (ESC as ␛), tables still
    aligned; --json keeps the exact string."""
    name = f"Hostile_{uuid.uuid4().hex[:8]}"
    assert cli("collections", "create", "--name", name, "--property", "title:text").code == 0
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"title": f"desert {HOSTILE}"}) + "\n")
    assert cli("import", str(path), "--collection", name).code == 0
    with Gensearch(running_stack.address) as client:
        # A question is free text, stored as asked; a conversation's name may no longer
        # hold control characters (memory refuses them), so the turn carries them here.
        turn = client.collections.get(name).chat().ask(f"Which desert? {HOSTILE}")
        with pytest.raises(InvalidArgumentError):
            client.conversations.update(turn.conversation_id, name=HOSTILE)
    for argv in (
        ("search", "-c", name, "--keyword", "desert"),
        ("collections", "show", name),
        ("conversations", "list"),
        ("conversations", "show", turn.conversation_id),
    ):
        shown = cli(*argv)
        assert shown.code == 0, shown.err
        assert not any(ch in shown.out for ch in "\x1b\x07\r\x9b"), (argv, shown.out)
    shown = cli("conversations", "show", turn.conversation_id).out
    assert "␛]0;owned␇␛[31mRed␛[0mOver\ufffd2J" in shown  # (\r dropped)
    found = cli("search", "-c", name, "--keyword", "desert", "--json")
    assert json.loads(found.out)["hits"][0]["properties"]["title"] == f"desert {HOSTILE}"
    # An error quoting what the caller sent is printed the same way.
    missing = cli("conversations", "show", "\x1b[2J")
    assert missing.code != 0 and "\x1b" not in missing.err, missing.err
