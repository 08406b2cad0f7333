"""A mistyped flag is named in the one usage line, with the nearest option, pointing at the
help of the command that takes it. Before, argparse reported it last: a misspelt query flag
came out as "one of the arguments --near-text --keyword … is required", a misspelt global
flag made its value "an invalid choice" of command, and a misspelt search flag pointed at
`gensearch --help`, which does not list the search options."""

from __future__ import annotations

import argparse

import pytest

from tests.cli.conftest import CliAlone


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["search", "-c", "Books", "--keywrd", "desert"],
            "error: unrecognized argument --keywrd (did you mean --keyword?) "
            "(see: gensearch search --help)",
        ),
        (
            ["--adress", "127.0.0.1:1", "status"],
            "error: unrecognized argument --adress (did you mean --address?) "
            "(see: gensearch --help)",
        ),
        (
            ["search", "-c", "Books", "--keyword", "desert", "--limt", "3"],
            "error: unrecognized argument --limt (did you mean --limit?) "
            "(see: gensearch search --help)",
        ),
        (
            ["collections", "create", "--nme", "Books"],
            "error: unrecognized argument --nme (did you mean --name?) "
            "(see: gensearch collections create --help)",
        ),
        (
            ["ask", "-c", "Books", "--no-memry", "Who?"],
            "error: unrecognized argument --no-memry (did you mean --no-memory?) "
            "(see: gensearch ask --help)",
        ),
        (
            ["search", "-c", "Books", "--keyword", "x", "--zzzzzz=1"],
            "error: unrecognized argument --zzzzzz (see: gensearch search --help)",
        ),
        # Not a flag: argparse's message, pointing at the command's help (it pointed at
        # `gensearch --help`).
        (
            ["ask", "-c", "Books", "Who?", "extra"],
            "error: unrecognized arguments: extra (see: gensearch ask --help)",
        ),
    ],
)
def test_a_mistyped_flag_is_named(argv: list[str], expected: str, cli_alone: CliAlone) -> None:
    result = cli_alone(argv)
    assert result.code == 2
    assert result.out == ""
    assert result.err == expected + "\n"


@pytest.mark.parametrize(
    "argv",
    [
        # A unique prefix is argparse's to take, a global flag after the command too, and
        # a value after "--" is no flag at all.
        ["search", "-c", "Books", "--keyword", "desert", "--lim", "3"],
        ["search", "-c", "Books", "--keyword", "desert", "--address", "127.0.0.1:1"],
        ["ask", "-c", "Books", "--no-memory", "--", "--what is this?"],
        # A flag kept out of the help (help=SUPPRESS) is still a flag.
        ["conversations", "delete", "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d", "--state-dir", "."],
    ],
)
def test_known_flags_reach_the_call(
    argv: list[str], cli_alone: CliAlone, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_ADDRESS", "127.0.0.1:1")
    result = cli_alone(argv)
    err = result.err
    assert result.code == 1, err  # parsed, then the call found no gateway
    assert err.startswith("error: UNAVAILABLE: cannot reach the gateway"), err


_COMMANDS = ("up", "status", "collections", "import", "search", "generate", "ask", "conversations")


def _argparse_refusal(argument: str, value: str, choices: tuple[str, ...]) -> str:
    """argparse's own refusal of ``value`` for ``argument`` (a positional's metavar or an
    option), as the running Python words it: its quoting of the choices changed after 3.11
    (quoted there, bare in newer ones), and the CLI adds only its suggestion and help
    pointer to it."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    if argument.startswith("--"):
        parser.add_argument(argument, choices=choices)
        argv = [argument, value]
    else:
        parser.add_argument("value", metavar=argument, choices=choices)
        argv = [value]
    with pytest.raises(argparse.ArgumentError) as refused:
        parser.parse_args(argv)
    return str(refused.value)


def _with_suggestion(refusal: str, close: str) -> str:
    """``refusal`` with the CLI's "did you mean" put before argparse's list of choices."""
    assert refusal.count("(choose from ") == 1, refusal
    return refusal.replace("(choose from ", f"(did you mean '{close}'?; choose from ")


@pytest.mark.parametrize(
    ("argv", "refusal", "close", "see"),
    [
        (["colections", "list"], ("COMMAND", "colections", _COMMANDS), "collections", "gensearch"),
        (
            ["conversations", "lst"],
            ("ACTION", "lst", ("list", "show", "delete")),
            "list",
            "gensearch conversations",
        ),
        (
            ["collections", "create", "--name", "Books", "--vectorizer", "locl"],
            ("--vectorizer", "locl", ("local", "none", "openai")),
            "local",
            "gensearch collections create",
        ),
        # Nothing close: argparse's message as it was.
        (["xyzzy"], ("COMMAND", "xyzzy", _COMMANDS), None, "gensearch"),
    ],
)
def test_a_mistyped_command_or_choice_names_the_one_meant(
    argv: list[str],
    refusal: tuple[str, str, tuple[str, ...]],
    close: str | None,
    see: str,
    cli_alone: CliAlone,
) -> None:
    """A mistyped subcommand or choice got argparse's list of every choice, leaving the
    reader to spot the one meant; a mistyped flag was already named with the nearest.
    argparse's part of the line is taken from argparse itself, so that the test holds on
    every Python the project supports."""
    message = _argparse_refusal(*refusal)
    if close is not None:
        message = _with_suggestion(message, close)
    result = cli_alone(argv)
    assert result.code == 2
    assert result.out == ""
    assert result.err == f"error: {message} (see: {see} --help)\n"
