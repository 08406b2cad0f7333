"""services/common/suggest.py: the closest known name, only when close."""

from __future__ import annotations

from services.common.suggest import closest, did_you_mean


def test_the_closest_name_is_suggested_only_when_close() -> None:
    known = ["title", "body", "year", "tags"]
    assert closest("yeer", known) == "year"
    assert closest("titel", known) == "title"
    assert closest("zzz", known) is None
    assert closest("", known) is None
    assert closest("y" * 10_000, known) is None  # longer than any name: not compared
    assert did_you_mean("yeer", known) == ("; did you mean 'year'?", {"suggestion": "year"})
    assert did_you_mean("zzz", known) == ("", {})
