"""GenerativeSearch through the whole stack: per-hit results and errors, templates,
grouped prompts, defaults, the concurrency bound, the budget, a dead generation service."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2, struct_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from services.gateway import templates
from tests.gateway.conftest import ALICE, BOOKS, DIM, Stack, StackFactory, create_books
from tests.support.fake_openai import Behaviour
from tests.support.rpc import bad_request_field as _bad_request_field
from tests.support.rpc import error_info


def _near(limit: int = 5, **generate: object) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=limit,
        generate=gw_pb.Generate(**generate),  # type: ignore[arg-type]
    )


def _count(kind: str, code: str) -> float:
    labels = {"kind": kind, "code": code}
    return REGISTRY.get_sample_value("gensearch_gateway_generations_total", labels) or 0.0


def _title(hit: gw_pb.GenerativeHit) -> str:
    return hit.hit.properties.fields["title"].string_value


async def test_per_hit_results_and_errors_side_by_side(stack: Stack) -> None:
    await create_books(stack)
    # One upstream answer fails (whichever hit's request arrives first): only that hit.
    stack.fake.enqueue(Behaviour.error(400))
    before = {code: _count("single", code) for code in ("OK", "FAILED_PRECONDITION")}
    response = await stack.stub.GenerativeSearch(
        _near(single_prompt="Summarise {title}: {body}", debug=True), metadata=ALICE
    )
    assert len(response.hits) == 5
    by_title = {_title(h): h.generation for h in response.hits}
    draft = by_title.pop("Untitled draft")
    assert draft.error.reason == "MISSING_PROPERTY"
    assert draft.error.status == "FAILED_PRECONDITION"
    assert "'body'" in draft.error.message
    assert not draft.result
    failed = [t for t, g in by_title.items() if g.HasField("error")]
    assert len(failed) == 1
    assert by_title[failed[0]].error.status == "INVALID_ARGUMENT"
    ok = {t: g for t, g in by_title.items() if not g.HasField("error")}
    assert len(ok) == 3
    for title, generation in ok.items():
        book = next(b for b in BOOKS if b["title"] == title)
        expected = f"Summarise {title}: {book['body']}"
        assert generation.result == expected  # the fake echoes the prompt
        assert generation.prompt == expected  # debug
        assert generation.usage.total_tokens > 0
        assert generation.model == "fake-model"
    assert response.usage.total_tokens == sum(g.usage.total_tokens for g in ok.values())
    assert len(stack.fake.chat_requests) == 4  # the draft never reached the LLM
    assert _count("single", "OK") - before["OK"] == 3
    assert _count("single", "FAILED_PRECONDITION") - before["FAILED_PRECONDITION"] == 1


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("Tell me a joke about {{braces}}", ["placeholder"]),
        ("About {title} by {author}", ["'author'"]),
        ("About {title", ["unclosed"]),
    ],
)
async def test_template_errors_fail_before_any_llm_call(
    stack: Stack, prompt: str, words: list[str]
) -> None:
    await create_books(stack)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerativeSearch(_near(single_prompt=prompt), metadata=ALICE)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for word in words:
        assert word in (err.value.details() or "")
    assert _bad_request_field(err.value) == "generate.single_prompt"
    # The path once: "generate.single_prompt: single_prompt has no …" said it twice.
    assert (err.value.details() or "").count("single_prompt") == 1
    assert stack.fake.chat_requests == []


async def test_unknown_grouped_property_is_rejected(stack: Stack) -> None:
    await create_books(stack)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerativeSearch(
            _near(grouped_task="Compare", grouped_properties=["nope"]), metadata=ALICE
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_field(err.value) == "generate.grouped_properties"


@pytest.mark.parametrize(
    ("generate", "field"),
    [
        ({"single_prompt": "About {author}"}, "generate.single_prompt"),
        (
            {"grouped_task": "Compare", "grouped_properties": ["nope"]},
            "generate.grouped_properties",
        ),
    ],
)
async def test_unknown_template_property_named_even_with_return_properties(
    stack: Stack, generate: dict[str, object], field: str
) -> None:
    # The gateway widens return_properties with the templates' properties; the error must
    # still name the field the caller wrote, not the widened search.
    await create_books(stack)
    request = _near(**generate)
    request.return_properties.append("title")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerativeSearch(request, metadata=ALICE)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_field(err.value) == field
    assert stack.fake.chat_requests == []


async def test_unknown_provider_fails_the_request_not_every_hit(stack: Stack) -> None:
    await create_books(stack)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerativeSearch(
            _near(single_prompt="About {title}", provider="nope"), metadata=ALICE
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_field(err.value) == "generate.provider"
    assert "nope" in (err.value.details() or "")
    assert stack.fake.chat_requests == []


async def test_grouped_prompt_over_selected_properties(stack: Stack) -> None:
    await create_books(stack)
    response = await stack.stub.GenerativeSearch(
        _near(limit=3, grouped_task="Which is oldest?", grouped_properties=["title", "year"]),
        metadata=ALICE,
    )
    assert len(stack.fake.chat_requests) == 1
    grouped = response.grouped.result
    assert grouped.startswith("Which is oldest?")
    titles = [_title(h) for h in response.hits]
    for number, title in enumerate(titles, start=1):
        assert f"[{number}]\ntitle: {title}\nyear: " in grouped
    assert "body" not in grouped
    assert all(not h.HasField("generation") for h in response.hits)
    assert response.usage.total_tokens == response.grouped.usage.total_tokens > 0


async def test_a_grouped_prompt_past_the_rendered_limit_is_its_own_error(
    stack_factory: StackFactory,
) -> None:
    # The per-hit prompts are held to MAX_RENDERED_PROMPT_CHARS; the grouped one went to
    # generation, which refused it naming `messages`, a field the caller never sent.
    stack = await stack_factory(max_rendered_prompt_chars=120)
    await create_books(stack)
    request = _near(limit=3, single_prompt="About {title}", grouped_task="Which is oldest?")
    response = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    assert all(h.generation.result for h in response.hits)  # each hit's prompt fits
    error = response.grouped.error
    assert (error.status, error.reason) == ("INVALID_ARGUMENT", "PROMPT_TOO_LONG")
    assert "generate.grouped_task" in error.message and "grouped_properties" in error.message
    assert len(stack.fake.chat_requests) == 3  # no grouped call
    stream = stack.stub.StreamGenerativeSearch(
        gw_pb.StreamGenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=3,
            generate=gw_pb.Generate(grouped_task="Which is oldest?"),
        ),
        metadata=ALICE,
    )
    grouped = [e.grouped async for e in stream if e.HasField("grouped")]
    assert [g.error.reason for g in grouped] == ["PROMPT_TOO_LONG"]


async def test_options_default_from_collection_then_request(stack: Stack) -> None:
    await create_books(
        stack,
        generative=ret_pb.GenerativeConfig(
            provider="fake", model="collection-model", temperature=0.3, max_tokens=40
        ),
    )
    await stack.stub.GenerativeSearch(_near(limit=1, single_prompt="{title}"), metadata=ALICE)
    sent = stack.fake.chat_requests[-1].json
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("collection-model", 0.3, 40)
    await stack.stub.GenerativeSearch(
        _near(limit=1, single_prompt="{title}", model="request-model", temperature=0.9),
        metadata=ALICE,
    )
    sent = stack.fake.chat_requests[-1].json
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("request-model", 0.9, 40)


async def test_return_properties_are_honoured_while_templates_see_theirs(stack: Stack) -> None:
    await create_books(stack, books=[b for b in BOOKS if b["body"]])
    request = _near(limit=2, single_prompt="{body}")
    request.return_properties.append("title")
    response = await stack.stub.GenerativeSearch(request, metadata=ALICE)
    for hit in response.hits:
        assert set(hit.hit.properties.fields) == {"title"}
        assert hit.generation.result  # rendered from body, which was not returned


async def test_concurrency_is_bounded(stack: Stack) -> None:
    books = [{"title": f"Book {i}", "body": "x", "year": 2000, "tags": []} for i in range(12)]
    await create_books(stack, books=books)
    stack.fake.latency = 0.3  # long enough that every admitted call overlaps the others
    response = await stack.stub.GenerativeSearch(
        _near(limit=12, single_prompt="{title}", max_concurrency=3), metadata=ALICE
    )
    assert all(h.generation.result for h in response.hits)
    assert stack.fake.max_concurrent == 3
    stack.fake.reset_stats()
    # Long enough that all twelve overlap even on a loaded machine.
    stack.fake.latency = 1.5
    await stack.stub.GenerativeSearch(_near(limit=12, single_prompt="{title}"), metadata=ALICE)
    assert stack.fake.max_concurrent == 12  # no cap by default: all at once


async def test_timeout_keeps_finished_hits(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.enqueue(Behaviour.hang(60), Behaviour.hang(60))
    # A budget of 3 s: the three healthy generations (a few ms each when idle) finish
    # within it even on a loaded machine (at 0.5 s one of them once might not have).
    response = await stack.stub.GenerativeSearch(
        _near(
            single_prompt="{title}",
            max_concurrency=8,
            timeout=duration_pb2.Duration(seconds=3),
        ),
        metadata=ALICE,
        timeout=30,
    )
    # The budget ended it, not the hanging answers (60 s): an answer came, before the
    # call's own 30 s deadline, with those two hits failed for the budget (below).
    statuses = sorted(h.generation.error.status or "OK" for h in response.hits)
    assert statuses == ["DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "OK", "OK", "OK"]
    # The request's generate.timeout ran out: the hits name it, as any error about a
    # client's field does (they said "within the timeout", with no field).
    for hit in response.hits:
        if hit.generation.HasField("error"):
            assert hit.generation.error.metadata["field"] == "generate.timeout"
            assert "generate.timeout" in hit.generation.error.message
    # The abandoned upstream requests were really cancelled.
    await asyncio.wait_for(stack.fake.disconnected.wait(), 5)


async def test_call_deadline_is_the_budget_when_no_timeout(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.enqueue(Behaviour.hang(30))
    response = await stack.stub.GenerativeSearch(
        _near(limit=2, single_prompt="{title}"), metadata=ALICE, timeout=1.5
    )
    statuses = sorted(h.generation.error.status or "OK" for h in response.hits)
    assert statuses == ["DEADLINE_EXCEEDED", "OK"]
    # The call's deadline, no field of the request, set the budget: no field is named.
    (error,) = [h.generation.error for h in response.hits if h.generation.HasField("error")]
    assert "field" not in error.metadata


async def test_generation_down_gives_per_hit_unavailable(stack_factory: StackFactory) -> None:
    stack = await stack_factory(generation=False)
    await create_books(stack)
    response = await stack.stub.GenerativeSearch(
        _near(single_prompt="{title}", grouped_task="Compare"), metadata=ALICE, timeout=10
    )
    assert len(response.hits) == 5
    assert {h.generation.error.status for h in response.hits} == {"UNAVAILABLE"}
    assert {h.generation.error.code for h in response.hits} == {14}
    assert response.grouped.error.status == "UNAVAILABLE"
    # A plain sentence and a reason, not the channel's transport detail.
    assert {h.generation.error.message for h in response.hits} == {
        "the generation service is unavailable; try again shortly"
    }
    assert {h.generation.error.reason for h in response.hits} == {"DOWNSTREAM_UNAVAILABLE"}


async def test_search_without_generation_is_a_plain_search(stack: Stack) -> None:
    ids = await create_books(stack)
    response = await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection="Books", keyword=ret_pb.Keyword(text="desert spice"), limit=3
        ),
        metadata=ALICE,
    )
    assert response.hits[0].hit.id == ids[0]
    assert not response.hits[0].HasField("generation")
    assert stack.fake.chat_requests == []


@pytest.mark.parametrize(
    "generate",
    [gw_pb.Generate(), gw_pb.Generate(cache=gw_pb.GenerationCache(mode=gw_pb.CACHE_MODE_USE))],
)
async def test_a_generate_block_without_a_task_is_refused(
    stack: Stack, generate: gw_pb.Generate
) -> None:
    """An absent block is a plain search; a present one with neither single_prompt nor
    grouped_task is refused as GenerateOnObjects refuses it (QA: it was a plain search)."""
    await create_books(stack)
    search = dict(collection="Books", near_vector=ret_pb.NearVector(vector=[0.5] * DIM))
    for call in (
        stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(**search, generate=generate), metadata=ALICE
        ),
        _drain(
            stack.stub.StreamGenerativeSearch(
                gw_pb.StreamGenerativeSearchRequest(**search, generate=generate), metadata=ALICE
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _bad_request_field(err.value) == "generate.single_prompt"
    assert stack.fake.chat_requests == []


async def _drain(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        pass


async def test_search_errors_pass_through(stack: Stack) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerativeSearch(_near(single_prompt="{title}"), metadata=ALICE)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert _bad_request_field(err.value) == "collection"  # the request's field (QA: "name")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerativeSearch(_near(limit=1000), metadata=ALICE)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_field(err.value) == "limit"
    # The gateway's own bound, with its setting (the refusal gave the field alone).
    assert error_info(err.value).reason == "OUT_OF_RANGE"
    assert error_info(err.value).metadata["max"] == "100"  # the default MAX_HITS
    assert error_info(err.value).metadata["setting"] == "GENSEARCH_GATEWAY_MAX_HITS"


@pytest.mark.parametrize(
    ("generate", "field"),
    [
        ({"single_prompt": "{title}", "max_concurrency": -1}, "generate.max_concurrency"),
        ({"single_prompt": "{title}", "temperature": 3.0}, "generate.temperature"),
        ({"single_prompt": "{title}", "max_tokens": 0}, "generate.max_tokens"),
        (
            {"single_prompt": "{title}", "timeout": duration_pb2.Duration(seconds=-1)},
            "generate.timeout",
        ),
        # Not valid Durations (QA: accepted): mixed signs, nanos past a second.
        (
            {"single_prompt": "{title}", "timeout": duration_pb2.Duration(seconds=5, nanos=-5)},
            "generate.timeout",
        ),
        (
            {"single_prompt": "{title}", "timeout": duration_pb2.Duration(nanos=1_000_000_000)},
            "generate.timeout",
        ),
        (
            {
                "single_prompt": "{title}",
                "cache": gw_pb.GenerationCache(ttl=duration_pb2.Duration(seconds=5, nanos=-5)),
            },
            "generate.cache.ttl",
        ),
        ({"grouped_properties": ["title"]}, "generate.grouped_task"),  # the field missing
        ({"single_prompt": "{title}" * 10_000}, "generate.single_prompt"),
        # A blank task sent the model the hits and no instruction (Ask refuses a blank
        # llm_question the same way).
        ({"grouped_task": " \n\t"}, "generate.grouped_task"),
        ({"single_prompt": "{title}", "grouped_task": "   "}, "generate.grouped_task"),
    ],
)
async def test_generate_options_are_validated(
    stack: Stack, generate: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GenerativeSearch(_near(**generate), metadata=ALICE)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_request_field(err.value) == field
    assert stack.fake.chat_requests == []


async def test_a_timeout_past_a_day_is_out_of_range_not_an_instant_deadline(
    stack: Stack,
) -> None:
    # 1e10 s made a gRPC deadline past its range: every hit failed at once with
    # DEADLINE_EXCEEDED "the generation service did not answer in time", and the call OK.
    ids = await create_books(stack)
    for seconds in (86_401, 10**10, 315_576_000_000):
        timeout = duration_pb2.Duration(seconds=seconds)
        request = gw_pb.GenerateOnObjectsRequest(
            collection="Books",
            ids=gw_pb.ObjectIds(ids=ids[:1]),
            generate=gw_pb.Generate(single_prompt="{title}", timeout=timeout),
        )
        for call in (
            stack.stub.GenerativeSearch(
                _near(single_prompt="{title}", timeout=timeout), metadata=ALICE
            ),
            stack.stub.GenerateOnObjects(request, metadata=ALICE),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _bad_request_field(err.value) == "generate.timeout"
            assert error_info(err.value).metadata["max_seconds"] == "86400"
    assert stack.fake.chat_requests == []
    # A day is still a budget.
    day = gw_pb.Generate(single_prompt="{title}", timeout=duration_pb2.Duration(seconds=86_400))
    response = await stack.stub.GenerateOnObjects(
        gw_pb.GenerateOnObjectsRequest(
            collection="Books", ids=gw_pb.ObjectIds(ids=ids[:1]), generate=day
        ),
        metadata=ALICE,
    )
    assert response.hits[0].generation.result.endswith("Dune")


async def test_one_span_per_hit_and_one_for_the_grouped_call(
    stack: Stack, spans: InMemorySpanExporter
) -> None:
    ids = await create_books(stack)
    stack.fake.enqueue(Behaviour.error(400))  # one hit's call fails
    spans.clear()
    response = await stack.stub.GenerativeSearch(
        _near(limit=3, single_prompt="Tell me about {title}", grouped_task="Compare them"),
        metadata=ALICE,
    )
    generate = [s for s in spans.get_finished_spans() if s.name.startswith("generate ")]
    by_name = {s.name: s for s in generate}
    assert sorted(by_name) == [
        "generate grouped",
        "generate hit 0",
        "generate hit 1",
        "generate hit 2",
    ]
    outcomes = []
    for index, hit in enumerate(response.hits):
        attributes = by_name[f"generate hit {index}"].attributes or {}
        assert attributes["gensearch.hit.index"] == index
        assert attributes["gensearch.object.id"] == hit.hit.id and hit.hit.id in ids
        expected = hit.generation.error.status or "OK"
        assert attributes["gensearch.outcome"] == expected
        outcomes.append(expected)
    grouped = by_name["generate grouped"].attributes or {}
    assert grouped["gensearch.hits"] == 3
    assert grouped["gensearch.outcome"] == (response.grouped.error.status or "OK")
    # Whichever call met the upstream 400, exactly one span says so.
    outcomes.append(str(grouped["gensearch.outcome"]))
    assert sorted(outcomes) == ["INVALID_ARGUMENT", "OK", "OK", "OK"]
    # Prompts never go into traces.
    for span in generate:
        assert not any("Tell me about" in str(v) for v in (span.attributes or {}).values())


async def test_single_prompt_is_parsed_once_per_request(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsed once, then checked against the schema and rendered per hit from that parse
    (a spy around the real parser counts; nothing is replaced)."""
    ids = await create_books(stack)
    sources: list[str] = []
    real = templates.parse

    def counted(source: str, *, field: str) -> templates.Template:
        sources.append(source)
        return real(source, field=field)

    monkeypatch.setattr(templates, "parse", counted)
    prompt = "Summarise {title}"
    response = await stack.stub.GenerativeSearch(
        _near(single_prompt=prompt, grouped_task="Compare"), metadata=ALICE
    )
    assert all(h.generation.result.startswith("Summarise ") for h in response.hits)
    assert sources == [prompt]
    named = gw_pb.GenerateOnObjectsRequest(
        collection="Books",
        ids=gw_pb.ObjectIds(ids=ids[:3]),
        generate=gw_pb.Generate(single_prompt=prompt),
    )
    assert len((await stack.stub.GenerateOnObjects(named, metadata=ALICE)).hits) == 3
    assert sources == [prompt] * 2
    tea = struct_pb2.Struct()
    tea.update({"title": "Tea"})
    inline = gw_pb.GenerateOnObjectsRequest(
        inline=gw_pb.InlineObjects(objects=[tea]), generate=gw_pb.Generate(single_prompt=prompt)
    )
    answer = await stack.stub.GenerateOnObjects(inline, metadata=ALICE)
    assert answer.hits[0].generation.result.endswith("Summarise Tea")
    assert sources == [prompt] * 3


async def test_a_huge_usage_sum_saturates_instead_of_failing(
    stack_factory: StackFactory,
) -> None:
    # QA: each call's usage is bounded (10 M tokens a field), the sum over hits was not:
    # 220 hits of 10 M + 10 M tokens overflowed the int32 total_tokens and the whole
    # request failed with INTERNAL.
    stack = await stack_factory(max_hits=220, shared={"max_limit": 220})
    books = [{"title": f"t{i}", "body": "b", "year": 2000, "tags": []} for i in range(220)]
    await create_books(stack, books=books)
    stack.fake.usage_override = {
        "prompt_tokens": 10_000_000,
        "completion_tokens": 10_000_000,
        "total_tokens": None,  # not a count: generation adds up the two
    }
    response = await stack.stub.GenerativeSearch(
        _near(limit=220, single_prompt="{title}"), metadata=ALICE, timeout=60
    )
    assert len(response.hits) == 220
    assert all(h.generation.usage.total_tokens == 20_000_000 for h in response.hits)
    assert response.usage.total_tokens == 2**31 - 1
    assert response.usage.prompt_tokens == 2**31 - 1  # 2.2e9 too


async def test_a_property_a_collection_lists_twice_is_shown_to_the_model_once(
    stack: Stack,
) -> None:
    """A collection's context_fields name properties; one named twice (or 5,000 times) was
    rendered as often into every hit's block, paid for in tokens, and enough repeats pushed
    every hit out of the Ask's context budget: the model was told "(no results)" while the
    hits came back. (A request's own repeats are refused: test_repeated_names.py.)"""
    await create_books(
        stack, generative=ret_pb.GenerativeConfig(provider="fake", context_fields=["title"] * 3)
    )
    response = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="which book?",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            context_size=2,
        ),
        metadata=ALICE,
    )
    asked = stack.fake.chat_requests[-1].json["messages"][-1]["content"]
    assert response.trimmed.hits == 0 and "(no results)" not in asked, asked[:300]
    for hit in response.hits:
        title = hit.properties.fields["title"].string_value
        assert asked.count(f"title: {title}") == 1, asked[:300]
