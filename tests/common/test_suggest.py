"""services/common/suggest.py: the closest known name, only when close."""

from __future__ import annotations

from collections.abc import Iterator

from services.common.suggest import MAX_KNOWN, closest, did_you_mean


def test_the_closest_name_is_suggested_only_when_close() -> None:
    known = ["title", "body", "year", "tags"]
    assert closest("yeer", known) == "year"
    assert closest("titel", known) == "title"
    assert closest("zzz", known) is None
    assert closest("", known) is None
    assert closest("y" * 10_000, known) is None  # longer than any name: not compared
    assert did_you_mean("yeer", known) == ("; did you mean 'year'?", {"suggestion": "year"})
    assert did_you_mean("zzz", known) == ("", {})


def test_among_more_names_than_any_collection_holds_nothing_is_suggested() -> None:
    # A caller's inline objects may name ~190,000 properties, each made close to the name
    # it then gets wrong: difflib compared them all, 5.8 s of the gateway's event loop.
    others = [f"p{i}" for i in range(MAX_KNOWN - 1)]
    assert closest("title", ["titel", *others]) == "titel"
    assert closest("title", ["titel", *others, "p_last"]) is None
    # Bounded by the names read, not their count: a generator is not read to its end.
    read = 0

    def names() -> Iterator[str]:
        nonlocal read
        for i in range(10 * MAX_KNOWN):
            read += 1
            yield f"n{i}"

    assert closest("title", names()) is None
    assert read == MAX_KNOWN + 1


def test_a_name_in_the_other_case_is_suggested_however_short() -> None:
    # difflib compares letters as they are: "nu3" shares one of three with "NU3" (0.33,
    # under the 0.6 cutoff), so `gensearch import -c nu3` suggested nothing while
    # "pythonreference" got 'PythonReference'.
    assert closest("nu3", ["NU3", "Books"]) == "NU3"
    assert closest("ID", ["id", "title"]) == "id"
    assert did_you_mean("books", ["Books", "Boots"]) == (
        "; did you mean 'Books'?",
        {"suggestion": "Books"},
    )
