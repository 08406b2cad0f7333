"""--filter's short cuts, and what a mistyped operator says (no stack needed)."""

from __future__ import annotations

import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb

from services.cli.client import UsageError
from services.cli.query import parse_filter


def test_operators_by_short_or_proto_name() -> None:
    for op in ("less_than", "LESS_THAN", "OPERATOR_LESS_THAN"):
        parsed = parse_filter(f'{{"property": "year", "operator": "{op}", "value": 1}}')
        assert parsed.condition.operator == rpb.OPERATOR_LESS_THAN


def test_an_unknown_operator_lists_the_ones_there_are() -> None:
    # Before: protobuf's "Failed to parse operator field: Invalid enum value bogus for enum
    # type gensearch.retrieval.v1.Operator at Filter.condition.operator."
    with pytest.raises(UsageError) as caught:
        parse_filter('{"property": "year", "operator": "bogus", "value": 1}')
    message = str(caught.value)
    assert message.startswith("--filter: unknown operator 'bogus'")
    assert "equal, " in message and "less_than" in message and "text_match" in message
    assert "unspecified" not in message
    nested = '{"any_of": [{"property": "year", "operator": "lt", "value": 1}]}'
    with pytest.raises(UsageError, match="unknown operator 'lt'"):
        parse_filter(nested)


def test_a_mistyped_operator_names_the_closest() -> None:
    # Before: the list alone, for the reader to find "less_than" in nine names.
    for op in ("less_then", "OPERATOR_LESS_THEN"):
        with pytest.raises(UsageError) as caught:
            parse_filter(f'{{"property": "year", "operator": "{op}", "value": 1}}')
        assert str(caught.value).startswith(
            f"--filter: unknown operator '{op}' (did you mean less_than?): use one of equal, "
        )
    with pytest.raises(UsageError) as caught:  # nothing close: the list alone
        parse_filter('{"property": "year", "operator": "bogus", "value": 1}')
    assert "did you mean" not in str(caught.value)
