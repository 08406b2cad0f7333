"""What `gensearch --help` and its commands' help say."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import re
from pathlib import Path

import grpc
import pytest

from services.cli import stack as stack_mod
from services.cli.__main__ import build_parser
from services.generation.fallback import FALLBACK_CODES

ENV_DEFAULTS = sorted(
    set(re.findall(r'env(?:_int)?\("(GENSEARCH_\w+)"', inspect.getsource(stack_mod.add_arguments)))
)


def test_the_variables_are_found() -> None:
    assert {"GENSEARCH_DATA_DIR", "GENSEARCH_HOST", "GENSEARCH_GATEWAY_PORT"} <= set(ENV_DEFAULTS)


@pytest.mark.parametrize("name", ENV_DEFAULTS)
def test_an_option_set_by_a_variable_says_so_in_its_help(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: `--host HOST  bind address of every part`, while GENSEARCH_HOST set it and
    # every other option read from the environment named its variable.
    monkeypatch.delenv(name, raising=False)
    before = vars(parser().parse_args([]))
    monkeypatch.setenv(name, "7")
    after = parser()
    changed = [dest for dest, value in vars(after.parse_args([])).items() if before[dest] != value]
    assert len(changed) == 1, name
    option = "--" + changed[0].replace("_", "-")
    # The option's entry in the help: from its line to the next option's.
    help_text = " ".join(after.format_help().split("\noptions:\n", 1)[1].split())
    entry = help_text[help_text.index(f"{option} ") :]
    entry = entry[: entry.find(" --", len(option))]
    assert f"env {name}" in entry, entry


def parser() -> argparse.ArgumentParser:
    made = argparse.ArgumentParser(prog="gensearch up")
    stack_mod.add_arguments(made)
    return made


def test_ask_help_says_timeout_is_the_answer_budget() -> None:
    # Before: "deadline of each call (default: per command)": no word that for ask it is
    # also the server's answer budget, 30 s unless given, which the bundled model on a
    # busy machine outlasts (DEADLINE_EXCEEDED / UPSTREAM_TIMEOUT).
    text = " ".join(subcommand_help("ask").split())
    entry = text[text.index("--timeout SECONDS ") :]
    assert "answer budget (default: the gateway's GENSEARCH_GATEWAY_ASK_TIMEOUT, 30 s)" in entry


def subcommand_help(name: str) -> str:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        build_parser().parse_args([name, "--help"])
    return buffer.getvalue()


COMMANDS = [
    ["up"], ["status"], ["import"], ["search"], ["generate"], ["ask"],
    *(["collections", c] for c in ("create", "list", "show", "delete")),
    *(["conversations", c] for c in ("list", "show", "delete")),
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_option_a_help_refers_to_is_one_of_that_command(command: list[str]) -> None:
    # Before: `ask --help` said "TTL as for --cache", and ask has no --cache (search has).
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    usage, _, rest = " ".join(out.getvalue().split()).partition(" options: ")
    referred = re.findall(r"(?<![\w-])as for (--[\w-]+)", rest)
    missing = [o for o in referred if not re.search(rf"(?<![\w-]){o}(?![\w-])", usage)]
    assert not missing, (command, missing)


def _options(argv: list[str]) -> list[str]:
    """The long options ``gensearch <argv> --help`` lists (its entries' first words)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    entries = out.getvalue().partition("\noptions:\n")[2]
    found = re.findall(r"^ {2}(?:-\w[^,\n]*, )?(--[\w-]+)", entries, flags=re.MULTILINE)
    return [o for o in found if o not in ("--help", "--version")]


def _cli_doc_section(command: str) -> str:
    """docs/cli.md's section on ``gensearch <command>``, its subsections included."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    start = text.index(f"\n## `gensearch {command}`")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_option_of_a_command_is_in_its_section_of_docs_cli(command: list[str]) -> None:
    # Before: `collections list --page-size` was in the help and nowhere in docs/cli.md
    # (conversations list's --page-size was, in another section).
    section = _cli_doc_section(command[0])
    options = _options(command)
    assert options, command  # the help's entries were found
    # The connection and output options every command takes are documented once, in
    # their own section (checked by the next test).
    options = [o for o in options if o not in _options([])]
    missing = [o for o in options if not re.search(rf"(?<![\w-]){o}(?![\w-])", section)]
    assert not missing, (command, missing)


def test_every_global_option_is_in_docs_cli() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    options = _options([])
    assert "--api-key" in options, options  # the help's entries were found
    missing = [o for o in options if not re.search(rf"(?<![\w-]){o}(?![\w-])", text)]
    assert not missing, missing


# What a user reads for each status that moves a hit to the next pair of a chain
# (services/generation/fallback.py: a 5xx and a failed connection are UNAVAILABLE, a 429
# retried past the pair's time is RESOURCE_EXHAUSTED).
FALLBACK_WORDS = {
    grpc.StatusCode.UNAVAILABLE: ("5xx", "connection"),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("timeout",),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("429",),
}


@pytest.mark.parametrize("command", ["search", "generate", "ask"])
def test_the_fallback_help_names_every_failure_that_moves_on(command: str) -> None:
    # Before: "tried in order when the primary fails with a 5xx or a timeout", while a
    # primary that cannot be reached (a refused connection) or keeps answering 429 moves
    # on too: a user reading it kept an unreachable provider out of the chain's reasons.
    assert set(FALLBACK_WORDS) == FALLBACK_CODES
    text = " ".join(subcommand_help(command).split())
    entry = text[text.index("--fallback PROVIDER[/MODEL] ") :]
    entry = entry[: entry.find(" --", len("--fallback"))]
    for words in FALLBACK_WORDS.values():
        for word in words:
            assert word in entry, (word, entry)
