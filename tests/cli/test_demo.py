"""The demo run of ``gensearch up --demo`` against the test stack (fake LLM, real rest)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from services.cli import demo
from services.cli.output import command_name
from tests.cli.conftest import RunningStack


def test_demo_imports_once_then_searches_and_converses(
    cli: Any,
    running_stack: RunningStack,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = running_stack.fake
    # Model output is anyone's text: an ESC or BEL in it drove the terminal raw.
    fake.reply = lambda body: f"ANSWER#{len(fake.chat_requests)} \x1b]0;owned\x07\x1b[31mRed"
    monkeypatch.setattr(running_stack.stack.args, "demo_limit", 24)
    capsys.readouterr()

    running_stack.loop.run(demo.run(running_stack.stack, time.perf_counter()))
    out = capsys.readouterr().out
    assert f"demo collection {demo.COLLECTION}: created" in out
    # Loaded through `gensearch import --chunk-property` (issue 15), its command printed:
    # each topic a document the importer's chunker cuts into the demo's passages.
    command = out[out.index(f"{command_name()} import ") :].splitlines()[0]
    assert "--chunk-property text" in command
    assert "--document-property topic --order-property part" in command
    assert f"imported 24 objects into {demo.COLLECTION}" in out
    shown = json.loads(cli("collections", "show", demo.COLLECTION, "--json").out)
    assert shown["object_count"] == 24
    # hits, then a result per hit, then the grouped result, then the two turns
    assert out.index("3 hits:") < out.index("→") < out.index("grouped result:")
    assert out.count(" →\n") == 3
    assert out.index("── conversation") < out.index(f"you: {demo.QUESTIONS[0]}")
    assert out.index(f"you: {demo.QUESTIONS[0]}") < out.index(f"you: {demo.QUESTIONS[1]}")
    assert out.count("sources:") == 2
    assert "first answer printed" in out
    assert "\x1b" not in out and "\x07" not in out
    assert out.count("␛]0;owned␇␛[31mRed") == 3 + 1 + 2  # per hit, grouped, two turns
    assert "SmolLM2" not in out  # the fake answered (--llm-base-url), not the bundled model
    # The stack is on a free port: the hint says how to reach it.
    assert (
        f'gensearch ask --address {running_stack.address} -c {demo.COLLECTION} "your question"'
        in out
    )

    # What went to the LLM: per-hit prompts filled from the hits, the provider's model.
    prompts = [r.json["messages"][-1]["content"] for r in fake.chat_requests]
    assert sum("In one short sentence" in p for p in prompts) == 3
    assert any(demo.GROUPED_TASK in p for p in prompts)
    per_hit = [r for r in fake.chat_requests if "In one short sentence" in str(r.json)]
    assert all(r.json.get("max_tokens") == demo.MAX_TOKENS for r in per_hit)

    # The two turns are one conversation, and `gensearch ask` would continue it.
    remembered = json.loads((tmp_path / "state" / "last_conversation").read_text())
    conversation_id = remembered[running_stack.address]
    shown = cli("conversations", "show", conversation_id, "--json")
    turns = json.loads(shown.out)["interactions"]
    assert [t["input"] for t in turns] == list(demo.QUESTIONS)

    # A second run reuses the collection: no import.
    capsys.readouterr()
    running_stack.loop.run(demo.run(running_stack.stack, time.perf_counter()))
    again = capsys.readouterr().out
    assert "24 passages (kept from the last run)" in again
    assert "importing" not in again

    listed = json.loads(cli("collections", "show", demo.COLLECTION, "--json").out)
    assert listed["vectorizer"]["kind"] == "VECTORIZER_KIND_LOCAL"
    assert listed["keyword_index"] is True
    assert listed["generative"]["provider"] == "local"


def test_continue_hint_names_what_the_user_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    # This installation's gensearch on PATH (an activated venv): the bare name.
    monkeypatch.setenv("PATH", str(Path(sys.prefix) / "bin"))
    default = demo.continue_hint("localhost:50050")
    assert (
        default == f'continue the conversation: gensearch ask -c {demo.COLLECTION} "your question"'
    )
    keyed = demo.continue_hint("127.0.0.1:51050", ran_as="alice (tenant acme)")
    assert f"gensearch ask --address 127.0.0.1:51050 -c {demo.COLLECTION}" in keyed
    # The conversation is remembered per key: only the key the demo used continues it.
    assert keyed.endswith(
        "(the stack checks API keys: the demo ran as alice (tenant acme); add that "
        "user's key with --api-key <key> or set GENSEARCH_API_KEY)"
    )


def test_the_tiny_model_note_only_when_the_bundled_model_answered() -> None:
    # `up --demo --llm-provider openai` (or --llm-base-url) starts no local model: the
    # closing note must not blame the bundled SmolLM2 for another model's answers.
    bundled = SimpleNamespace(children={"llm": object(), "redis": object()})
    assert "SmolLM2-135M" in (demo.model_note(bundled) or "")
    assert demo.model_note(SimpleNamespace(children={"redis": object()})) is None


def test_hints_name_the_venv_script_when_gensearch_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # `make run` runs .venv/bin/python with the venv not activated: the hints said
    # `gensearch ask …`, which the shell then could not find.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(Path(sys.prefix).parent)
    script = Path(sys.prefix).name + "/bin/gensearch"  # ".venv/bin/gensearch"
    assert demo.continue_hint("localhost:50050") == (
        f'continue the conversation: {script} ask -c {demo.COLLECTION} "your question"'
    )
    monkeypatch.chdir(tmp_path)  # elsewhere: the script's full path
    assert command_name() == str(Path(sys.prefix) / "bin" / "gensearch")


def test_a_demo_import_cut_short_is_completed_by_the_next_start(
    running_stack: RunningStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during the first start's import left part of the corpus; every later start
    said "N passages (kept from the last run)" and ran the demo on that part for ever."""
    from gensearch.client.errors import NotFoundError

    from services.cli.client import Client, Connection

    args = running_stack.stack.args
    whole = demo.demo_objects(24)

    async def cut_short_then_start_again() -> int:
        conn = Connection(address=running_stack.address, api_key=running_stack.stack.api_key)
        async with Client(conn) as client:
            with contextlib.suppress(NotFoundError):
                await client.collections.delete(demo.COLLECTION)
            await client.collections.create_from(
                demo.collection_spec(args.llm_provider, args.llm_model), timeout=30
            )
            cut = await client.collections.get(demo.COLLECTION).data.import_(whole[:10])
            assert cut.imported == 10
            try:
                return await demo.ensure_corpus(client, args.llm_provider, args.llm_model, 24)
            finally:
                await client.collections.delete(demo.COLLECTION)

    capsys.readouterr()
    count = running_stack.loop.run(cut_short_then_start_again())
    out = capsys.readouterr().out
    assert count == 24  # the 10 replaced (stable ids), the 14 missing added
    assert f"demo collection {demo.COLLECTION}: 10 of its 24 passages" in out
    assert "kept from the last run" not in out
    assert f"imported 24 objects into {demo.COLLECTION}" in out
