"""A refusal's message names its field once, in full (services.common.errors)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.common.errors import InvalidArgument, NotFound, out_of_range

ROOT = Path(__file__).resolve().parents[2]


def _shown(message: str, field: str) -> str:
    """The message of a refusal of ``field``, as the client reads it too; what names the
    field for a program is unchanged."""
    err = InvalidArgument(message, field=field)
    assert err.to_proto().message == err.message
    assert err.field == field and err.metadata["field"] == field
    return err.message


@pytest.mark.parametrize(
    ("message", "field", "shown"),
    [
        # The message begins with the field's last segment: the whole path takes its place
        # (it said the field twice: "generate.single_prompt: single_prompt has no …").
        (
            "single_prompt has no {property} placeholder",
            "generate.single_prompt",
            "generate.single_prompt has no {property} placeholder",
        ),
        (
            "max_concurrency must not be negative",
            "generate.max_concurrency",
            "generate.max_concurrency must not be negative",
        ),
        ("objects[2] is empty", "request.objects", "request.objects[2] is empty"),
    ],
)
def test_the_field_takes_the_place_of_its_segment(message: str, field: str, shown: str) -> None:
    assert _shown(message, field) == shown


@pytest.mark.parametrize(
    ("message", "field"),
    [
        # Not the segment as a whole word.
        ("model_name is wrong", "generate.model"),
        ("no property 'a'", "inline.objects[0].a"),
        # A client's own name as the segment, opening a sentence it is not the subject of
        # (found by review: "inline.objects[0].no property 'no' in …").
        ("no property 'no'", "inline.objects[0].no"),
        ("the limit is 5", "objects[3].properties.the"),
        # A field of one segment not named by the message: as before.
        ("it is wrong", "page_size"),
    ],
)
def test_the_field_prefixes_a_message_it_is_not_the_subject_of(message: str, field: str) -> None:
    assert _shown(message, field) == f"{field}: {message}"


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("page_size must not be negative", "page_size"),
        ("ranges[1].first must be …", "ranges[1].first"),
    ],
)
def test_a_message_naming_its_field_in_full_is_left_alone(message: str, field: str) -> None:
    assert _shown(message, field) == message


def test_a_message_without_a_field_is_left_alone() -> None:
    assert NotFound("single_prompt has no placeholder").message == (
        "single_prompt has no placeholder"
    )


def test_out_of_range_names_its_setting_after_the_message() -> None:
    err = out_of_range(
        "limit must be between 0 and 50",
        field="limit",
        bound=50,
        setting="GENSEARCH_GATEWAY_MAX_HITS",
    )
    assert err.message == "limit must be between 0 and 50 (GENSEARCH_GATEWAY_MAX_HITS)"
    assert err.reason == "OUT_OF_RANGE"
    assert err.metadata == {"max": "50", "setting": "GENSEARCH_GATEWAY_MAX_HITS", "field": "limit"}


def test_no_out_of_range_message_names_its_setting() -> None:
    """``out_of_range`` appends the setting to every message, so a caller's own text must
    not name one (it would be said twice): every call's message says only the bound."""
    calls = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "out_of_range":
                calls.append((f"{path.name}:{node.lineno}", node))
    assert len(calls) >= 20  # the scan found the callers
    naming = []
    for where, call in calls:
        (setting,) = [ast.unparse(k.value) for k in call.keywords if k.arg == "setting"]
        parts = call.args[0].values if isinstance(call.args[0], ast.JoinedStr) else [call.args[0]]
        for part in parts:
            if isinstance(part, ast.Constant) and "GENSEARCH_" in str(part.value):
                naming.append(where)  # a setting's name written out
            if isinstance(part, ast.FormattedValue) and ast.unparse(part.value) == setting:
                naming.append(where)  # the setting passed in again
    assert naming == []
