"""--property of `collections create`: what its help says is what it does (no stack needed)."""

from __future__ import annotations

import argparse

import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb

from services.cli.__main__ import build_parser
from services.cli.admin import parse_property
from services.cli.client import UsageError


def _create_help() -> str:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    collections = commands.choices["collections"]
    (actions,) = [a for a in collections._actions if isinstance(a, argparse._SubParsersAction)]
    return " ".join(actions.choices["create"].format_help().split())


def test_a_property_without_a_type_is_text_and_the_help_says_so() -> None:
    # Before: the help read "--property NAME:TYPE", so `--property year` looked like a
    # mistake the command would refuse; it quietly made a text property.
    assert parse_property("year").data_type == rpb.DATA_TYPE_TEXT
    text = _create_help()
    assert "--property NAME[:TYPE]" in text
    assert "default text" in text


def test_a_mistyped_type_names_the_closest() -> None:
    # Before: the list of types alone ("year:integer" is what many schemas write).
    for spec, meant in (("year:integer", "year:int"), ("tags:txt", "tags:text")):
        with pytest.raises(UsageError) as caught:
            parse_property(spec)
        assert str(caught.value).endswith(f"text_array (did you mean {meant}?)")
    with pytest.raises(UsageError) as caught:  # nothing close: the list alone
        parse_property("x:blob")
    assert str(caught.value).endswith("text_array")
