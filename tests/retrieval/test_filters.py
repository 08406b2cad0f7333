"""Every filter operator on every property type, on both storage adapters, checked against
the same predicate evaluated in Python."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import grpc
import pytest
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

from tests.retrieval.conftest import (
    ALL,
    ANY,
    EQ,
    GT,
    GTE,
    LT,
    LTE,
    NE,
    TEXT,
    MakeRetrieval,
    all_of,
    any_of,
    cond,
    expect_error,
    none_of,
    vector_collection,
)
from tests.retrieval.data import DIMS, article_objects, articles, ids_where
from tests.support.rpc import error_info

RATING = articles()[2]["props"]["rating"]


def when(text: str) -> datetime:
    return datetime.fromisoformat(text)


Case = tuple[str, pb.Filter, Callable[[dict[str, Any]], bool]]
CASES: list[Case] = [
    # text
    (
        "text eq",
        cond("title", EQ, "Jazz improvisation basics"),
        lambda p: p["title"].startswith("Jazz"),
    ),
    (
        "text ne",
        cond("title", NE, "Jazz improvisation basics"),
        lambda p: not p["title"].startswith("Jazz"),
    ),
    ("text match", cond("body", TEXT, "Sourdough STARTERS"), lambda p: "sourdough" in p["body"]),
    (
        "text match all words",
        cond("title", TEXT, "the physics"),
        lambda p: "physics" in p["title"].lower(),
    ),
    (
        "text any",
        cond("title", ANY, ["Gardening with native plants", "Jazz improvisation basics"]),
        lambda p: p["title"] in ("Gardening with native plants", "Jazz improvisation basics"),
    ),
    # text array
    ("array eq", cond("tags", EQ, "science"), lambda p: "science" in p["tags"]),
    ("array ne", cond("tags", NE, "science"), lambda p: "science" not in p["tags"]),
    (
        "array any",
        cond("tags", ANY, ["food", "music"]),
        lambda p: bool({"food", "music"} & set(p["tags"])),
    ),
    (
        "array all",
        cond("tags", ALL, ["science", "space"]),
        lambda p: {"science", "space"} <= set(p["tags"]),
    ),
    ("array text", cond("tags", TEXT, "ocean"), lambda p: "ocean" in p["tags"]),
    # int
    ("int eq", cond("year", EQ, 2017), lambda p: p["year"] == 2017),
    ("int ne", cond("year", NE, 2017), lambda p: p["year"] != 2017),
    ("int lt", cond("year", LT, 2017), lambda p: p["year"] < 2017),
    ("int lte", cond("year", LTE, 2017), lambda p: p["year"] <= 2017),
    ("int gt", cond("year", GT, 2019), lambda p: p["year"] > 2019),
    ("int gte", cond("year", GTE, 2019), lambda p: p["year"] >= 2019),
    ("int any", cond("year", ANY, [2015, 2018]), lambda p: p["year"] in (2015, 2018)),
    # An int compared with any finite number (was WRONG_TYPE unless an int64).
    ("int gt fraction", cond("year", GT, 2016.5), lambda p: p["year"] > 2016.5),
    (
        "int within huge bounds",
        all_of(cond("year", LT, 1e300), cond("year", GT, -1e300), cond("year", GTE, 2018.5)),
        lambda p: p["year"] >= 2019,
    ),
    # number (one object has no rating: NOT_EQUAL holds for it)
    ("number eq", cond("rating", EQ, RATING), lambda p: p.get("rating") == RATING),
    ("number ne", cond("rating", NE, RATING), lambda p: p.get("rating") != RATING),
    ("number lt", cond("rating", LT, 3.0), lambda p: "rating" in p and p["rating"] < 3.0),
    ("number lte", cond("rating", LTE, RATING), lambda p: "rating" in p and p["rating"] <= RATING),
    ("number gt", cond("rating", GT, 3.0), lambda p: "rating" in p and p["rating"] > 3.0),
    ("number gte", cond("rating", GTE, RATING), lambda p: "rating" in p and p["rating"] >= RATING),
    ("number any", cond("rating", ANY, [RATING, 99.5]), lambda p: p.get("rating") == RATING),
    # bool
    ("bool eq", cond("published", EQ, True), lambda p: p["published"] is True),
    ("bool ne", cond("published", NE, True), lambda p: p["published"] is not True),
    ("bool any", cond("published", ANY, [False]), lambda p: p["published"] is False),
    # date (the value in another offset is the same instant as 2024-03-12T12:00:00Z)
    (
        "date eq",
        cond("date", EQ, "2024-03-12T14:00:00+02:00"),
        lambda p: p["date"] == "2024-03-12T12:00:00Z",
    ),
    (
        "date ne",
        cond("date", NE, "2024-03-12T12:00:00Z"),
        lambda p: p["date"] != "2024-03-12T12:00:00Z",
    ),
    (
        "date lt",
        cond("date", LT, "2024-03-01T00:00:00Z"),
        lambda p: when(p["date"]) < when("2024-03-01T00:00:00Z"),
    ),
    (
        "date lte",
        cond("date", LTE, "2024-03-12T12:00:00Z"),
        lambda p: when(p["date"]) <= when("2024-03-12T12:00:00Z"),
    ),
    (
        "date gt",
        cond("date", GT, "2024-05-01T00:00:00Z"),
        lambda p: when(p["date"]) > when("2024-05-01T00:00:00Z"),
    ),
    (
        "date gte",
        cond("date", GTE, "2024-05-14T12:00:00Z"),
        lambda p: when(p["date"]) >= when("2024-05-14T12:00:00Z"),
    ),
    # groups
    (
        "all_of",
        all_of(cond("tags", EQ, "science"), cond("year", GTE, 2017)),
        lambda p: "science" in p["tags"] and p["year"] >= 2017,
    ),
    (
        "any_of",
        any_of(cond("tags", EQ, "food"), cond("published", EQ, False)),
        lambda p: "food" in p["tags"] or p["published"] is False,
    ),
    (
        "none_of",
        none_of(cond("tags", EQ, "computing"), cond("year", LT, 2016)),
        lambda p: not ("computing" in p["tags"] or p["year"] < 2016),
    ),
    (
        "nested",
        all_of(
            any_of(cond("tags", EQ, "science"), cond("tags", EQ, "food")),
            none_of(cond("title", TEXT, "black holes")),
        ),
        lambda p: bool({"science", "food"} & set(p["tags"])) and "black" not in p["title"].lower(),
    ),
]


@pytest.fixture(params=["edge", "server"])
async def loaded(request: pytest.FixtureRequest, make_retrieval: MakeRetrieval) -> Any:
    harness = await make_retrieval(request.param)
    await harness.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Articles", DIMS))
    )
    resp = await harness.stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Articles", objects=article_objects())
    )
    assert not resp.errors
    return harness.stub


async def test_every_operator(loaded: Any) -> None:
    stub = loaded
    probe = articles()[0]["vector"]
    for name, flt, predicate in CASES:
        expected = ids_where(predicate)
        assert 0 < len(expected) < 12 or name in ("text match all words",), name
        count = await stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=flt))
        assert count.count == len(expected), name
        found = await stub.Search(
            pb.SearchRequest(
                collection="Articles",
                near_vector=pb.NearVector(vector=probe),
                filter=flt,
                limit=100,
            )
        )
        assert {h.id for h in found.hits} == expected, name


BAD: list[tuple[pb.Filter, str]] = [
    (cond("colour", EQ, "red"), "filter.condition.property"),
    (
        all_of(cond("year", EQ, 2017), cond("nope", EQ, 1)),
        "filter.all_of.filters[1].condition.property",
    ),
    (cond("year", EQ, "2017"), "filter.condition.value"),
    (cond("year", EQ, 2017.5), "filter.condition.value"),
    (cond("rating", GT, "high"), "filter.condition.value"),
    (cond("published", EQ, 1), "filter.condition.value"),
    (cond("date", LT, "yesterday"), "filter.condition.value"),
    (cond("date", LT, "2024-01-01T00:00:00"), "filter.condition.value"),  # no offset
    (cond("date", LT, "2024-01-01T00:00:00Z\x00junk"), "filter.condition.value"),  # NUL
    (cond("title", LT, "b"), "filter.condition.operator"),
    (cond("published", GT, True), "filter.condition.operator"),
    (cond("year", TEXT, "x"), "filter.condition.operator"),
    (cond("title", ALL, ["a"]), "filter.condition.operator"),
    (cond("tags", ANY, "science"), "filter.condition.value"),
    (cond("tags", ANY, []), "filter.condition.value"),
    (cond("tags", ANY, ["a", 3]), "filter.condition.value[1]"),
    (cond("year", pb.OPERATOR_UNSPECIFIED, 1), "filter.condition.operator"),
    (any_of(), "filter.any_of.filters"),
    (pb.Filter(), "filter"),
    (none_of(cond("title", TEXT, "  ")), "filter.none_of.filters[0].condition.value"),
]


async def test_bad_filters(loaded: Any) -> None:
    stub = loaded
    for flt, field in BAD:
        await expect_error(
            stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=flt)),
            grpc.StatusCode.INVALID_ARGUMENT,
            field,
        )
    await expect_error(
        stub.Search(
            pb.SearchRequest(
                collection="Articles",
                keyword=pb.Keyword(text="x"),
                filter=cond("colour", EQ, "red"),
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter.condition.property",
    )


def _bound_cases(depth: int, conditions: int, values: int) -> list[tuple[Any, ...]]:
    """(at the bound, one past it, the field named, the bound, reason, setting) for a
    filter's depth, conditions and list values."""

    def nested(levels: int) -> pb.Filter:
        flt = cond("year", EQ, 2000)
        for _ in range(levels):
            flt = all_of(flt)
        return flt

    return [
        (
            nested(depth),
            nested(depth + 1),
            "filter" + ".all_of.filters[0]" * (depth + 1),
            depth,
            "NESTING_TOO_DEEP",
            "GENSEARCH_RETRIEVAL_MAX_FILTER_DEPTH",
        ),
        (
            any_of(*[cond("year", EQ, i) for i in range(conditions)]),
            any_of(*[cond("year", EQ, i) for i in range(conditions + 1)]),
            f"filter.any_of.filters[{conditions}]",
            conditions,
            "FILTER_TOO_LARGE",
            "GENSEARCH_RETRIEVAL_MAX_FILTER_CONDITIONS",
        ),
        (
            cond("tags", ANY, [str(i) for i in range(values)]),
            cond("tags", ANY, [str(i) for i in range(values + 1)]),
            "filter.condition.value",
            values,
            "FILTER_TOO_LARGE",
            "GENSEARCH_RETRIEVAL_MAX_FILTER_VALUES",
        ),
    ]


async def _check_bounds(stub: Any, cases: list[tuple[Any, ...]]) -> None:
    def count(flt: pb.Filter) -> Any:
        return stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=flt))

    for at, past, field, bound, reason, setting in cases:
        await count(at)
        err = await expect_error(count(past), grpc.StatusCode.INVALID_ARGUMENT, field)
        info = error_info(err)
        assert (info.reason, info.metadata["max"], info.metadata["setting"]) == (
            reason,
            str(bound),
            setting,
        ), err.details()
        assert setting in (err.details() or "")


async def test_the_filter_bounds_pass_at_their_value_and_name_it_past_it(loaded: Any) -> None:
    """8 levels, 256 conditions and 1024 values of a list pass by default; one more names
    the bound and its setting in ErrorInfo (they were fixed, with ``max`` alone)."""
    from services.retrieval.filters import MAX_CONDITIONS, MAX_DEPTH, MAX_LIST

    await _check_bounds(loaded, _bound_cases(MAX_DEPTH, MAX_CONDITIONS, MAX_LIST))


async def test_the_filter_bounds_are_settings(make_retrieval: MakeRetrieval) -> None:
    harness = await make_retrieval(max_filter_depth=2, max_filter_conditions=3, max_filter_values=4)
    await harness.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Articles", DIMS))
    )
    await _check_bounds(harness.stub, _bound_cases(2, 3, 4))


async def test_an_operator_the_enum_does_not_have_is_named_as_such(loaded: Any) -> None:
    # Operator 99 (a newer client's, or garbage) was "filter.condition.operator is
    # required", as if none had been sent.
    for op, says in ((99, ": 99 is not an Operator"), (-1, ": -1 is not an Operator")):
        err = await expect_error(
            loaded.CountObjects(
                pb.CountObjectsRequest(collection="Articles", filter=cond("year", op, 1))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "filter.condition.operator",
        )
        assert says in (err.details() or ""), err.details()
    err = await expect_error(
        loaded.CountObjects(
            pb.CountObjectsRequest(
                collection="Articles", filter=cond("year", pb.OPERATOR_UNSPECIFIED, 1)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter.condition.operator",
    )
    assert "is required" in (err.details() or "")


async def test_a_date_bound_finer_than_a_microsecond_is_compared_exactly(loaded: Any) -> None:
    """Dates are kept to the microsecond; a bound with more digits (Go's RFC3339Nano, Java's
    Instant) used to be cut to its microsecond, so "< X + 1 ns" left out a date at X and
    "== X + 1 ns" matched it. Every stored date lies on the microsecond grid, so the bound's
    further digits decide only which side of that grid point it falls."""
    stub = loaded
    at = "2024-03-12T12:00:00Z"
    later = "2024-03-12T12:00:00.000000001Z"  # 1 ns after
    earlier = "2024-03-12T11:59:59.999999001Z"  # 999 ns before
    cases = [
        (cond("date", LT, later), lambda p: when(p["date"]) <= when(at)),
        (cond("date", LTE, later), lambda p: when(p["date"]) <= when(at)),
        (cond("date", GT, later), lambda p: when(p["date"]) > when(at)),
        (cond("date", GTE, later), lambda p: when(p["date"]) > when(at)),
        (cond("date", GT, earlier), lambda p: when(p["date"]) >= when(at)),
        (cond("date", GTE, earlier), lambda p: when(p["date"]) >= when(at)),
        (cond("date", LT, earlier), lambda p: when(p["date"]) < when(at)),
        (cond("date", EQ, later), lambda p: False),
        (cond("date", NE, later), lambda p: True),
        (cond("date", ANY, [later, at]), lambda p: p["date"] == at),
        (cond("date", EQ, "2024-03-12T12:00:00.000000000Z"), lambda p: p["date"] == at),
    ]
    assert ids_where(lambda p: p["date"] == at)
    for flt, predicate in cases:
        count = await stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=flt))
        assert count.count == len(ids_where(predicate)), flt


async def test_values_expanding_past_the_engine_budget_are_refused(loaded: Any) -> None:
    """A number or date CONTAINS_ANY is one range per value: 256 such conditions of 1024
    values made 262 144 ranges, each checked against every point on the engine's one
    thread (minutes for a few thousand points, every tenant waiting). The expanded
    conditions are counted: past MAX_ENGINE_CONDITIONS the filter is refused, naming the
    condition that went over; a repeated value counts once."""
    from services.retrieval.filters import MAX_LIST

    stub = loaded
    max_engine_conditions = 2048  # filters.MAX_ENGINE_CONDITIONS
    dates = [f"2001-01-01T{h:02d}:{m:02d}:00Z" for h in range(24) for m in range(60)][:MAX_LIST]
    ratings = [i + 0.25 for i in range(MAX_LIST)]
    full = [cond("date", ANY, dates), cond("rating", ANY, ratings)]
    assert len(dates) + len(ratings) == max_engine_conditions
    count = await stub.CountObjects(
        pb.CountObjectsRequest(collection="Articles", filter=any_of(*full))
    )
    assert count.count == 0
    err = await expect_error(
        stub.CountObjects(
            pb.CountObjectsRequest(
                collection="Articles", filter=any_of(*full, cond("rating", EQ, RATING))
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter.any_of.filters[2].condition",
    )
    info = error_info(err)
    assert info.reason == "FILTER_TOO_LARGE"
    assert info.metadata["max"] == str(max_engine_conditions)
    # The same value a thousand times is one check, and still matches.
    same = [cond("rating", ANY, [RATING] * MAX_LIST) for _ in range(4)]
    count = await stub.CountObjects(
        pb.CountObjectsRequest(collection="Articles", filter=any_of(*same))
    )
    assert count.count == len(ids_where(lambda p: p.get("rating") == RATING))


async def test_the_filter_check_budget_is_a_setting(make_retrieval: MakeRetrieval) -> None:
    """GENSEARCH_RETRIEVAL_MAX_FILTER_CHECKS: a filter the default (2048) takes is refused
    under a lower setting, naming the condition that went over, the bound and the
    setting (it was a constant)."""
    harness = await make_retrieval("edge", max_filter_checks=4)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Articles", DIMS))
    )
    await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Articles", objects=article_objects())
    )
    # Two checks (the TEXT_MATCH) + three (one range per number) = 5 > 4.
    flt = all_of(cond("body", TEXT, "sourdough"), cond("rating", ANY, [RATING, 1.5, 2.5]))
    err = await expect_error(
        stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=flt)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "filter.all_of.filters[1].condition",
    )
    info = error_info(err)
    assert info.reason == "FILTER_TOO_LARGE"
    assert info.metadata["max"] == "4"
    assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_MAX_FILTER_CHECKS"
    assert "GENSEARCH_RETRIEVAL_MAX_FILTER_CHECKS" in (err.details() or "")
    # Within it (2 + 2 checks) the filter runs.
    within = all_of(cond("body", TEXT, "sourdough"), cond("rating", ANY, [RATING, 1.5]))
    count = await stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=within))
    assert count.count == len(
        ids_where(lambda p: "sourdough" in p["body"] and p.get("rating") in (RATING, 1.5))
    )
    # The default takes the larger one.
    default = await make_retrieval("edge", data_dir=harness.settings.data_dir.parent / "d2")
    await default.stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Articles", DIMS))
    )
    await default.stub.CountObjects(pb.CountObjectsRequest(collection="Articles", filter=flt))


def test_the_filter_check_budget_is_bounded() -> None:
    from pydantic import ValidationError

    from services.retrieval.settings import RetrievalSettings

    assert RetrievalSettings().max_filter_checks == 2048
    for wrong in (1, 10_001):
        with pytest.raises(ValidationError):
            RetrievalSettings(max_filter_checks=wrong)


async def test_a_filter_string_value_is_bounded_by_max_query_text_chars(
    make_retrieval: MakeRetrieval,
) -> None:
    """A condition's string value had no bound but the 4 MB request, all of it sent to the
    engine: past GENSEARCH_RETRIEVAL_MAX_QUERY_TEXT_CHARS it is FIELD_TOO_LARGE naming the
    value (each element of a list by its index), in a search, a count and a delete."""
    setting = "GENSEARCH_RETRIEVAL_MAX_QUERY_TEXT_CHARS"
    harness = await make_retrieval(max_query_text_chars=8)
    stub = harness.stub
    await stub.CreateCollection(
        pb.CreateCollectionRequest(collection=vector_collection("Articles", DIMS))
    )
    await stub.UpsertObjects(
        pb.UpsertObjectsRequest(collection="Articles", objects=article_objects())
    )
    long = "x" * 9
    calls = [
        (
            stub.CountObjects(
                pb.CountObjectsRequest(collection="Articles", filter=cond("title", EQ, long))
            ),
            "filter.condition.value",
        ),
        (
            stub.Search(
                pb.SearchRequest(
                    collection="Articles",
                    near_vector=pb.NearVector(vector=[1.0] * DIMS),
                    filter=all_of(cond("year", GT, 1), cond("body", TEXT, f"a {long}")),
                )
            ),
            "filter.all_of.filters[1].condition.value",
        ),
        (
            stub.DeleteObjects(
                pb.DeleteObjectsRequest(
                    collection="Articles", filter=cond("title", ANY, ["a", long])
                )
            ),
            "filter.condition.value[1]",
        ),
    ]
    for call, field in calls:
        err = await expect_error(call, grpc.StatusCode.INVALID_ARGUMENT, field)
        info = error_info(err)
        assert info.reason == "FIELD_TOO_LARGE", err.details()
        assert (info.metadata["max"], info.metadata["setting"]) == ("8", setting)
        assert setting in (err.details() or "")
    # At the bound the value is taken (and nothing was deleted above).
    count = await stub.CountObjects(
        pb.CountObjectsRequest(collection="Articles", filter=cond("title", NE, "x" * 8))
    )
    assert count.count == len(articles())
