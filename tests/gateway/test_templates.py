"""Templates and the grouped prompt: pure functions, no service needed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import FailedPrecondition, InvalidArgument
from services.gateway.grouped import grouped_prompt
from services.gateway.templates import (
    BlankPrompt,
    PromptTooLong,
    Template,
    check_single_prompt,
    parse,
    render,
)

SCHEMA = {"title", "body", "year", "tags", "price", "meta"}
FIELD = "generate.single_prompt"


def fill(template: Template, properties: Mapping[str, Any]) -> str:
    return render(template, properties, max_chars=1_000_000, field=FIELD)


def parse_single_prompt(source: str, schema: set[str], *, field: str) -> Template:
    template = parse(source, field=field)
    check_single_prompt(template, schema, field=field)
    return template


def test_placeholders_and_literal_braces() -> None:
    template = parse_single_prompt(
        "Summarise {title} ({year}) as {{json}}: {{}}", SCHEMA, field=FIELD
    )
    assert template.properties == ("title", "year")
    out = fill(template, {"title": "Dune", "year": 1965.0})
    assert out == "Summarise Dune (1965) as {json}: {}"


def test_non_text_values_are_json() -> None:
    template = parse("{tags}|{price}|{meta}|{year}", field=FIELD)
    out = fill(template, {"tags": ["a", "b"], "price": 2.5, "meta": {"k": True}, "year": 3.0})
    assert out == '["a", "b"]|2.5|{"k": true}|3'


def test_no_placeholder_is_invalid() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_single_prompt("Tell me a joke about {{braces}}", SCHEMA, field=FIELD)
    assert err.value.field == FIELD
    assert err.value.reason == "NO_PLACEHOLDER"


def test_unknown_property_is_invalid_and_named() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_single_prompt("About {title} by {author}", SCHEMA, field=FIELD)
    assert "'author'" in err.value.message
    assert err.value.field == FIELD
    assert err.value.metadata["property"] == "author"


@pytest.mark.parametrize("source", ["open { brace", "x } y", "{not a name}", "{}", "{a.b}"])
def test_bad_syntax_is_invalid(source: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse(source, field=FIELD)
    assert err.value.field == FIELD
    assert err.value.reason == "INVALID_TEMPLATE"


@pytest.mark.parametrize("props", [{}, {"title": ""}, {"title": None}, {"title": []}])
def test_missing_or_empty_property_fails_that_hit(props: dict[str, object]) -> None:
    template = parse("About {title}", field=FIELD)
    with pytest.raises(FailedPrecondition) as err:
        fill(template, props)
    assert err.value.reason == "MISSING_PROPERTY"
    assert "'title'" in err.value.message


@pytest.mark.parametrize(
    ("source", "props", "names"),
    [
        ("{title}", {"title": "  "}, ["title"]),
        (" {title}\n{body} ", {"title": "\t", "body": "\u00a0\n", "year": "x"}, ["title", "body"]),
        ("{title}{title}", {"title": "\r\n"}, ["title"]),
    ],
)
def test_a_prompt_rendered_blank_fails_that_hit(
    source: str, props: dict[str, object], names: list[str]
) -> None:
    # The generation service refuses a blank message naming messages[0].content, a field
    # the caller never sent: the hit's own error, naming the caller's field and properties.
    with pytest.raises(BlankPrompt) as err:
        fill(parse(source, field=FIELD), props)
    assert err.value.reason == "BLANK_PROMPT"
    assert err.value.field == FIELD and err.value.message.startswith(FIELD)
    assert err.value.metadata == {
        "field": FIELD,
        "property": names[0],
        "properties": ",".join(names),
    }
    assert all(repr(name) in err.value.message for name in names)
    # Whitespace around text is still text.
    assert fill(parse("{title}", field=FIELD), {"title": " x "}) == " x "


def test_zero_and_false_are_values_not_missing() -> None:
    template = parse("{year} {flag}", field=FIELD)
    assert fill(template, {"year": 0.0, "flag": False}) == "0 false"


def test_grouped_prompt_numbers_and_labels_hits() -> None:
    hits = [{"title": "A", "year": 2001.0, "body": "x"}, {"title": "B", "body": ""}]
    prompt = grouped_prompt("Compare these.", hits)
    assert prompt.startswith("Compare these.\n\nSearch results:\n\n[1]\n")
    assert "[1]\nbody: x\ntitle: A\nyear: 2001" in prompt
    assert "[2]\ntitle: B" in prompt  # empty body left out
    only = grouped_prompt("Compare.", hits, ["title"])
    assert "body" not in only and "year" not in only
    assert "[1]\ntitle: A\n\n[2]\ntitle: B" in only


class CountedReads(Mapping[str, Any]):
    """A hit's properties that count how often a value is looked up."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values
        self.reads = 0

    def __getitem__(self, name: str) -> Any:
        self.reads += 1
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def test_a_grouped_prompt_reads_each_hit_for_its_own_properties_not_every_name() -> None:
    """Inline objects without a collection may select (grouped_properties, else
    return_properties) every name of every object, ~100,000 in a 3 MB request, each hit
    holding a few: every name was looked up in every hit, 30 hits of 3,500 names held the
    gateway's event loop about a second. A hit now costs lookups for its own properties at
    most (50 hits of 2 names selected among 101: 5,050 lookups before, 100 now)."""
    hits = [CountedReads({f"h{i}_b": f"b{i}", f"h{i}_a": f"a{i}"}) for i in range(50)]
    only = [name for i in range(50) for name in (f"h{i}_a", f"h{i}_b")] + ["h0_a", "none"]
    prompt = grouped_prompt("Sum up.", hits, only)
    assert sum(hit.reads for hit in hits) <= sum(len(hit) for hit in hits)
    # In the selection's order (a before b, not the objects'), each name once.
    assert "[1]\nh0_a: a0\nh0_b: b0\n\n[2]\nh1_a: a1\nh1_b: b1" in prompt
    assert prompt.count("h0_a") == 1
    # A selection shorter than a hit's properties is read as before, in its own order.
    few = grouped_prompt("Sum up.", [{"b": "2", "a": "1", "c": "3"}], ["c", "a"])
    assert few.endswith("[1]\nc: 3\na: 1")


@given(st.text(max_size=200))
def test_any_text_parses_or_is_a_clear_invalid_argument(source: str) -> None:
    try:
        template = parse(source, field=FIELD)
    except InvalidArgument as err:
        assert err.field == FIELD and err.reason == "INVALID_TEMPLATE"
        return
    # Rendering with every placeholder filled gives back the source with braces unescaped.
    values = {name: f"<{name}>" for name in template.properties}
    expected = source
    for name in template.properties:
        expected = expected.replace("{" + name + "}", f"<{name}>")
    expected = expected.replace("{{", "{").replace("}}", "}")
    if "{{" not in source and "}}" not in source:
        if expected.strip():
            assert fill(template, values) == expected
        else:  # only whitespace: never sent (the generation service refuses it)
            with pytest.raises(BlankPrompt):
                fill(template, values)


@given(st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=100))
def test_escaped_braces_round_trip(text: str) -> None:
    source = "{{" + text + "}}"
    assert fill(parse(source, field=FIELD), {}) == "{" + text + "}"


def test_a_parsed_template_is_kept_and_errors_are_not() -> None:
    # Kept: a request's checks and its plan ask for the same template.
    first = parse("About {title}: {body}", field="generate.single_prompt")
    assert parse("About {title}: {body}", field="generate.single_prompt") is first
    assert first.properties == ("title", "body")
    # Each field's errors name that field, every time.
    for field in ("generate.single_prompt", "generate.single_prompt", "other"):
        with pytest.raises(InvalidArgument) as caught:
            parse("About {title", field=field)
        assert caught.value.field == field


def test_a_prompt_over_the_limit_fails_that_hit_before_it_is_built() -> None:
    # 10,000 placeholders of one 10 kB value rendered 100 MB per hit, unbounded.
    template = parse("{body}" * 10_000, field=FIELD)
    with pytest.raises(PromptTooLong) as err:
        render(template, {"body": "x" * 10_000}, max_chars=1_000_000, field=FIELD)
    assert err.value.field == FIELD
    assert err.value.reason == "PROMPT_TOO_LONG"
    assert err.value.metadata["max_chars"] == "1000000"
    # Exactly at the limit is fine.
    exact = render(
        parse("{body}" * 100, field=FIELD), {"body": "y" * 10_000}, max_chars=1_000_000, field=FIELD
    )
    assert len(exact) == 1_000_000
