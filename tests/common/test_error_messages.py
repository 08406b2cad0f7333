"""A refusal's message names its field once, in full (services.common.errors)."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound


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
        # Not the segment as a whole word: prefixed.
        ("model_name is wrong", "generate.model", "generate.model: model_name is wrong"),
        ("no property 'a'", "inline.objects[0].a", "inline.objects[0].a: no property 'a'"),
        # A client's own name as the segment, opening a sentence it is not the subject of
        # (found by review: "inline.objects[0].no property 'no' in …").
        ("no property 'no'", "inline.objects[0].no", "inline.objects[0].no: no property 'no'"),
        (
            "the limit is 5",
            "objects[3].properties.the",
            "objects[3].properties.the: the limit is 5",
        ),
        # Already in full, or a field of one segment: as before.
        ("page_size must not be negative", "page_size", "page_size must not be negative"),
        ("it is wrong", "page_size", "page_size: it is wrong"),
        ("ranges[1].first must be …", "ranges[1].first", "ranges[1].first must be …"),
    ],
)
def test_the_field_is_named_once(message: str, field: str, shown: str) -> None:
    err = InvalidArgument(message, field=field)
    assert err.message == shown
    assert err.to_proto().message == shown
    # What names the field for a program is unchanged.
    assert err.field == field and err.metadata["field"] == field


def test_a_message_without_a_field_is_left_alone() -> None:
    assert NotFound("single_prompt has no placeholder").message == (
        "single_prompt has no placeholder"
    )
