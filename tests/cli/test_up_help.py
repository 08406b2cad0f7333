"""`gensearch up --help` names the variable behind each option's default."""

from __future__ import annotations

import argparse
import inspect
import re

import pytest

from services.cli import stack as stack_mod

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
