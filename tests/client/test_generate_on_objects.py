"""Generation over named objects (the gateway's GenerateOnObjects and
StreamGenerateOnObjects) through the client, on the real stack with the loopback fake LLM
(which echoes the prompt it was sent, so each object's answer shows what it was asked)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import pytest
from gensearch.client import AsyncGensearch, Gensearch, errors, types

from tests.cli.conftest import RunningStack

_names = itertools.count()
BOOKS = [
    {"title": "Dune", "year": 1965},
    {"title": "Neuromancer", "year": 1984},
    {"title": "Foundation", "year": 1951},
]


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


async def _books(client: AsyncGensearch) -> tuple[str, list[str]]:
    name = f"NamedBooks{next(_names)}"
    books = await client.collections.create(name, {"title": "text", "year": "int"})
    written = await books.data.insert_many(BOOKS)
    assert not written.errors
    return name, written.ids


async def test_by_ids_answers_per_object_in_order_with_its_own_errors(
    client: AsyncGensearch,
) -> None:
    name, (dune, _, foundation) = await _books(client)
    books = client.collections.get(name)
    gone = str(uuid.uuid4())
    found = await books.generate.by_ids(
        [foundation, gone, dune.upper()],
        single_prompt="Teaser for {title} ({year})",
        grouped_task="Which is the oldest?",
        generation_timeout=timedelta(seconds=30),
        debug=True,
    )
    assert isinstance(found, types.GenerateOnObjectsResult)
    assert [h.id for h in found] == [foundation, gone, dune]  # order given, canonical ids
    first, missing, last = found
    assert first.properties == {"title": "Foundation", "year": 1951}
    assert isinstance(first.properties["year"], int)
    # Each object's own call (the fake echoes its prompt): the integer, not 1951.0.
    assert "Teaser for Foundation (1951)" in first.result and first.error is None
    assert "Teaser for Dune (1965)" in last.result
    assert missing.properties == {} and missing.result == ""
    assert missing.error and missing.error.reason == "OBJECT_NOT_FOUND"
    assert missing.error.status == "NOT_FOUND" and gone in missing.error.message
    assert found.failed == [missing] and set(found.by_id()) == {foundation, gone, dune}
    # One grouped call over the objects found (the missing one stays out).
    assert found.grouped and found.grouped.ok
    assert "Foundation" in found.grouped.prompt and "Dune" in found.grouped.prompt
    assert "Neuromancer" not in found.grouped.prompt
    assert found.usage and found.usage.total_tokens > 0
    assert found.raw.hits[1].hit.id == gone  # the message it came from

    # Grouped alone: no per-object results, but the missing id still carries its error.
    grouped = await books.generate.by_ids([gone, dune], grouped_task="Sum up", debug=True)
    assert grouped[1].generation is None
    assert grouped[0].error and grouped[0].error.reason == "OBJECT_NOT_FOUND"
    assert grouped.failed == [grouped[0]]
    assert grouped[0].properties == {} and grouped[1].properties["title"] == "Dune"
    assert grouped.grouped and "Dune" in grouped.grouped.prompt


async def test_on_objects_inline_with_and_without_a_collection(client: AsyncGensearch) -> None:
    when = datetime(2026, 12, 2, 8, 30, tzinfo=UTC)
    menu = await client.generate.on_objects(
        [
            {"name": "tea", "price": 3, "served": when, "since": date(2026, 1, 1)},
            types.DataObject(properties={"name": "cake", "price": 4.5}),
        ],
        single_prompt="Menu line for {name} at {price} EUR",
    )
    assert [h.id for h in menu] == ["", ""] and menu.grouped is None
    tea, cake = menu
    # Values come back as they were given: the int an int, the datetime a datetime (a
    # date as the datetime it was sent as, midnight UTC).
    assert tea.properties == {
        "name": "tea",
        "price": 3,
        "served": when,
        "since": datetime(2026, 1, 1, tzinfo=UTC),
    }
    assert isinstance(tea.properties["price"], int) and cake.properties["price"] == 4.5
    assert "Menu line for tea at 3 EUR" in tea.result
    assert "Menu line for cake at 4.5 EUR" in cake.result

    grouped_only = await client.generate.on_objects(
        [{"name": "tea"}, {"name": "cake"}], grouped_task="Which is sweeter?"
    )
    assert all(h.generation is None for h in grouped_only)
    assert grouped_only.grouped and "Which is sweeter?" in grouped_only.grouped.result

    # On a collection's handle its schema checks the objects.
    name, _ = await _books(client)
    books = client.collections.get(name)
    solaris = await books.generate.on_objects(
        [{"title": "Solaris", "year": 1961}], single_prompt="Blurb for {title}, {year}"
    )
    assert "Blurb for Solaris, 1961" in solaris[0].result
    assert solaris[0].properties["year"] == 1961
    with pytest.raises(errors.UnknownPropertyError) as caught:
        await books.generate.on_objects(
            [{"title": "Solaris", "author": "Lem"}], single_prompt="{title}"
        )
    assert caught.value.field == "inline.objects[0].author"
    with pytest.raises(TypeError):
        await books.generate.on_objects({"title": "one object, not a list"})


async def test_bad_requests_fail_the_whole_call_naming_the_field(client: AsyncGensearch) -> None:
    name, ids = await _books(client)
    books = client.collections.get(name)
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await books.generate.by_ids([ids[0], "not-a-uuid"], single_prompt="{title}")
    assert caught.value.field == "ids.ids[1]"
    with pytest.raises(errors.DuplicateIdError) as caught:
        await books.generate.by_ids([ids[0], ids[1], ids[0]], single_prompt="{title}")
    assert caught.value.field == "ids.ids[2]" and caught.value.metadata["first"] == "ids.ids[0]"
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await books.generate.by_ids([], single_prompt="{title}")
    assert caught.value.field == "ids.ids"
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await books.generate.by_ids(ids)  # neither single_prompt nor grouped_task
    assert caught.value.field == "generate.single_prompt"
    with pytest.raises(errors.NoPlaceholderError):
        await books.generate.by_ids(ids, single_prompt="no placeholder")
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await client.generate.on_objects([], single_prompt="{a}")
    assert caught.value.field == "inline.objects"
    with pytest.raises(errors.NotFoundError) as caught:
        await client.collections.get(f"{name}Gone").generate.by_ids(ids, grouped_task="Sum up")
    assert caught.value.field == "collection"
    with pytest.raises(TypeError):
        await books.generate.by_ids(ids[0], single_prompt="{title}")


async def test_streamed_by_ids_and_inline(client: AsyncGensearch) -> None:
    name, (dune, neuromancer, _) = await _books(client)
    books = client.collections.get(name)
    gone = str(uuid.uuid4())
    events = [
        e
        async for e in books.generate_stream.by_ids(
            [neuromancer, gone, dune], single_prompt="Summarise {title} ({year})",
            grouped_task="Compare them", stream_tokens=True,
        )
    ]  # fmt: skip
    hits = events[0]
    assert isinstance(hits, types.HitsEvent)
    assert [h.id for h in hits.hits] == [neuromancer, gone, dune]
    assert hits.hits[0].properties == {"title": "Neuromancer", "year": 1984}
    per_object = {e.hit_index: e for e in events if isinstance(e, types.HitResultEvent)}
    assert sorted(per_object) == [0, 1, 2]
    assert per_object[0].generation and "Summarise Neuromancer (1984)" in str(
        per_object[0].generation
    )
    failed = per_object[1].generation
    assert failed and failed.error and failed.error.reason == "OBJECT_NOT_FOUND"
    tokens = "".join(
        e.delta
        for e in events
        if isinstance(e, types.TokenEvent) and e.hit_index == 2 and not e.grouped
    )
    assert "Dune" in tokens
    (grouped,) = [e for e in events if isinstance(e, types.GroupedEvent)]
    assert grouped.generation.ok and "Compare them" in grouped.generation.result
    assert isinstance(events[-1], types.DoneEvent) and events[-1].usage

    inline = [
        e async for e in client.generate_stream.on_objects([{"n": 7}], single_prompt="Say {n}")
    ]
    assert isinstance(inline[0], types.HitsEvent) and inline[0].hits[0].properties == {"n": 7}
    (result,) = [e for e in inline if isinstance(e, types.HitResultEvent)]
    assert result.generation and "Say 7" in result.generation.result
    assert isinstance(inline[-1], types.DoneEvent)


def test_named_objects_from_the_blocking_client(running_stack: RunningStack) -> None:
    with Gensearch(running_stack.address) as client:
        books = client.collections.create(f"SyncNamed{next(_names)}", {"title": "text"})
        (ubik,) = books.data.insert_many([{"title": "Ubik"}]).ids
        found = books.generate.by_ids([ubik], single_prompt="Teaser for {title}")
        assert isinstance(found, types.GenerateOnObjectsResult)
        assert "Teaser for Ubik" in found[0].result
        events = list(client.generate_stream.on_objects([{"t": "x"}], single_prompt="Say {t}"))
        assert isinstance(events[0], types.HitsEvent) and isinstance(events[-1], types.DoneEvent)
        streamed = list(books.generate_stream.by_ids([ubik], grouped_task="Sum up"))
        assert any(isinstance(e, types.GroupedEvent) and e.generation.ok for e in streamed)
