"""Tenants and roles through the gateway: the gateway forwards (user, tenant, role), the
services enforce them, and the gateway's own collection cache never crosses tenants."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2

from tests.gateway.conftest import BOOKS, DIM, Stack, StackFactory, create_books, vector
from tests.gateway.test_generative_search import _near
from tests.support.rpc import error_info, failure_of, whole_answer

KEYS = ",".join(
    [
        "alice@acme/admin:key-alice-acme",
        "wes@acme/writer:key-wes-acme",
        "rita@acme/reader:key-rita-acme",
        "bob@globex/admin:key-bob-globex",
        "alice@globex/admin:key-alice-globex",
    ]
)


def key(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer key-{name}"),)


ALICE, WES, RITA = key("alice-acme"), key("wes-acme"), key("rita-acme")
BOB, ALICE_OF_GLOBEX = key("bob-globex"), key("alice-globex")


@pytest.fixture
async def tenants(stack_factory: StackFactory) -> Stack:
    # Every service gets the keys; the gateway forwards identities with the internal token.
    return await stack_factory(shared={"api_keys": KEYS}, collection_cache_ttl=60)


async def rpc_error(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value


async def test_another_tenant_cannot_list_read_search_or_delete(tenants: Stack) -> None:
    s = tenants
    await create_books(s, metadata=ALICE)
    for who in (BOB, ALICE_OF_GLOBEX):
        listed = await s.retrieval.ListCollections(ret_pb.ListCollectionsRequest(), metadata=who)
        assert list(listed.collections) == []
        for call in (
            s.retrieval.GetCollection(ret_pb.GetCollectionRequest(name="Books"), metadata=who),
            s.retrieval.DeleteCollection(
                ret_pb.DeleteCollectionRequest(name="Books"), metadata=who
            ),
            s.retrieval.Search(
                ret_pb.SearchRequest(
                    collection="Books", near_vector=ret_pb.NearVector(vector=vector(0))
                ),
                metadata=who,
            ),
            s.stub.GenerativeSearch(_near(single_prompt="{title}"), metadata=who),
            s.stub.Ask(gw_pb.AskRequest(collection="Books", llm_question="q"), metadata=who),
        ):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
            assert "Books" in (err.details() or "")
    got = await s.retrieval.GetCollection(ret_pb.GetCollectionRequest(name="Books"), metadata=ALICE)
    assert got.object_count == 5


async def _first(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        return


async def test_a_collection_not_found_names_the_requests_field(tenants: Stack) -> None:
    """Every gateway RPC that reads a collection's schema names its own field,
    ``collection`` (QA: retrieval's GetCollection field ``name`` leaked through), the
    same for a collection nobody has and another tenant's."""
    s = tenants
    await create_books(s, metadata=ALICE)
    ids = gw_pb.GenerateOnObjectsRequest(ids=gw_pb.ObjectIds(ids=[ANY_ID]))
    seen: set[tuple[str, str]] = set()
    for name, who in (("Nope", ALICE), ("Books", BOB)):
        for call in _calls_naming(s, name, who, ids):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
            info = error_info(err)
            assert info.metadata["field"] == "collection", err.details()
            seen.add((info.reason, (err.details() or "").replace("Nope", "Books")))
    assert len(seen) == 1  # missing and another tenant's read alike
    assert s.fake.chat_requests == []


async def test_a_malformed_collection_name_names_the_requests_field(tenants: Stack) -> None:
    """A name retrieval refuses as malformed (BAD_NAME) is the request's ``collection``
    too, not GetCollection's ``name`` (QA: "Bo\\x00oks", a 100 000-character name, "1abc"
    all came back naming ``name``, a field no gateway request has)."""
    s = tenants
    inline = gw_pb.InlineObjects(objects=[struct_pb2.Struct(fields={"title": _text("a")})])
    objects = gw_pb.GenerateOnObjectsRequest(inline=inline)
    for name in ("Bo\x00oks", "x" * 100_000, "1abc"):
        for call in _calls_naming(s, name, ALICE, objects):
            err = await rpc_error(call)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            info = error_info(err)
            assert info.reason == "BAD_NAME"
            assert info.metadata["field"] == "collection", err.details()
            assert (err.details() or "").startswith("collection must match"), err.details()
    assert s.fake.chat_requests == []


ANY_ID = "0190a4b2-0000-7000-8000-000000000000"


def _calls_naming(
    s: Stack, name: str, who: Any, objects: gw_pb.GenerateOnObjectsRequest
) -> tuple[Awaitable[Any], ...]:
    """Every gateway call that names a collection to generate over, the streams read to
    their first event (``objects``: what the GenerateOnObjects call names)."""
    generate = gw_pb.Generate(single_prompt="{title}")
    near = ret_pb.NearVector(vector=vector(0))
    on_objects = gw_pb.GenerateOnObjectsRequest(collection=name, generate=generate)
    on_objects.MergeFrom(objects)
    return (
        s.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(collection=name, near_vector=near, generate=generate),
            metadata=who,
        ),
        _first(
            s.stub.StreamGenerativeSearch(
                gw_pb.StreamGenerativeSearchRequest(
                    collection=name, near_vector=near, generate=generate
                ),
                metadata=who,
            )
        ),
        s.stub.GenerateOnObjects(on_objects, metadata=who),
        s.stub.Ask(gw_pb.AskRequest(collection=name, llm_question="q"), metadata=who),
        _first(
            s.stub.StreamAsk(
                gw_pb.StreamAskRequest(collection=name, llm_question="q"), metadata=who
            )
        ),
    )


def _text(value: str) -> struct_pb2.Value:
    return struct_pb2.Value(string_value=value)


async def test_roles_through_the_gateway(tenants: Stack) -> None:
    s = tenants
    await create_books(s, metadata=ALICE)
    collection = ret_pb.Collection(
        name="Other",
        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
    )
    create = ret_pb.CreateCollectionRequest(collection=collection)
    drop = ret_pb.DeleteCollectionRequest(name="Books")
    upsert = ret_pb.UpsertObjectsRequest(
        collection="Books", objects=[ret_pb.DataObject(vector=vector(1))]
    )
    cases = [
        (s.retrieval.CreateCollection(create, metadata=RITA), "admin", "reader"),
        (s.retrieval.DeleteCollection(drop, metadata=RITA), "admin", "reader"),
        (s.retrieval.DeleteCollection(drop, metadata=WES), "admin", "writer"),
        (s.retrieval.UpsertObjects(upsert, metadata=RITA), "writer", "reader"),
    ]
    for call, needed, has in cases:
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
        info = error_info(err)
        assert info.reason == "ROLE_REQUIRED"
        assert dict(info.metadata) == {"required_role": needed, "role": has}
        assert f"'{needed}'" in (err.details() or "")
    # A reader searches, generates and keeps conversations of its own.
    result = await s.stub.GenerativeSearch(_near(limit=2, single_prompt="{title}"), metadata=RITA)
    assert len(result.hits) == 2
    made = await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=RITA)
    assert made.conversation.user == "rita"
    await s.retrieval.UpsertObjects(upsert, metadata=WES)
    got = await s.retrieval.GetCollection(ret_pb.GetCollectionRequest(name="Books"), metadata=RITA)
    assert got.object_count == 6


async def test_a_caller_without_the_role_is_refused_whatever_the_collection(
    tenants: Stack,
) -> None:
    """The gateway checks a new collection's cache TTL and fallback chain against its own
    settings; before, it did so before the role, so a reader sending a TTL past
    CACHE_MAX_TTL learned INVALID_ARGUMENT (and the gateway's limits), not that it may not
    create collections at all."""
    limit = 7 * 86400  # CACHE_MAX_TTL's default
    too_long = duration_pb2.Duration(seconds=limit + 1)
    chain = [ret_pb.GenerativeModel(provider="fake", model=f"m{i}") for i in range(9)]
    bodies = [
        ret_pb.GenerativeConfig(cache=ret_pb.CacheDefaults(generation=True, ttl=too_long)),
        ret_pb.GenerativeConfig(fallback=chain),
        ret_pb.GenerativeConfig(cache=ret_pb.CacheDefaults(ttl=duration_pb2.Duration(nanos=-1))),
    ]
    for generative in bodies:
        collection = ret_pb.Collection(
            name="Other",
            vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
            generative=generative,
        )
        create = ret_pb.CreateCollectionRequest(collection=collection)
        for who, has in ((RITA, "reader"), (WES, "writer")):
            err = await rpc_error(tenants.retrieval.CreateCollection(create, metadata=who))
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
            info = error_info(err)
            assert info.reason == "ROLE_REQUIRED"
            assert dict(info.metadata) == {"required_role": "admin", "role": has}
        # An admin sending the same body learns what is wrong with it.
        err = await rpc_error(tenants.retrieval.CreateCollection(create, metadata=ALICE))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()


async def test_the_collection_cache_is_per_tenant(tenants: Stack) -> None:
    # The same user name and collection name in two tenants: two collections with their own
    # generative defaults. With a 60 s cache, each must still get its own.
    s = tenants
    acme = ret_pb.GenerativeConfig(provider="fake", model="model-of-acme")
    globex = ret_pb.GenerativeConfig(provider="fake", model="model-of-globex")
    await create_books(s, metadata=ALICE, generative=acme)
    await create_books(s, metadata=ALICE_OF_GLOBEX, generative=globex)
    for who, model in ((ALICE, "model-of-acme"), (ALICE_OF_GLOBEX, "model-of-globex")) * 2:
        await s.stub.GenerativeSearch(_near(limit=1, single_prompt="{title}"), metadata=who)
        assert s.fake.chat_requests[-1].json["model"] == model


async def test_conversations_are_per_tenant_through_the_gateway(tenants: Stack) -> None:
    s = tenants
    made = await s.memory.CreateConversation(
        mem_pb.CreateConversationRequest(name="acme's"), metadata=ALICE
    )
    cid = made.conversation.conversation_id
    err = await rpc_error(
        s.memory.GetConversation(
            mem_pb.GetConversationRequest(conversation_id=cid), metadata=ALICE_OF_GLOBEX
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(2):
        await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    page = await s.memory.ListConversations(
        mem_pb.ListConversationsRequest(page_size=1), metadata=ALICE
    )
    err = await rpc_error(
        s.memory.ListConversations(
            mem_pb.ListConversationsRequest(page_size=1, page_token=page.next_page_token),
            metadata=ALICE_OF_GLOBEX,
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata.get("field") == "page_token"


async def test_anothers_conversation_in_an_ask_is_refused_as_a_missing_one(
    tenants: Stack,
) -> None:
    """Ask and StreamAsk naming a conversation of another user of the tenant, of another
    tenant's user of the same name, or none at all: the same code, message and details
    (the id aside), and no LLM call."""
    s = tenants
    await create_books(s, metadata=ALICE)  # acme's Books, which Rita reads
    await create_books(s, metadata=ALICE_OF_GLOBEX)
    made = await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    theirs, missing = made.conversation.conversation_id, str(uuid.uuid4())
    for who in (RITA, ALICE_OF_GLOBEX):
        for kind in (gw_pb.AskRequest, gw_pb.StreamAskRequest):
            rpc = s.stub.Ask if kind is gw_pb.AskRequest else s.stub.StreamAsk
            answers = [
                whole_answer(
                    await failure_of(
                        rpc(  # type: ignore[operator]
                            kind(collection="Books", llm_question="q", conversation_id=c),
                            metadata=who,
                        )
                    ),
                    c,
                )
                for c in (theirs, missing)
            ]
            assert answers[0] == answers[1]
            assert answers[0][0] == grpc.StatusCode.NOT_FOUND
    assert not s.fake.chat_requests


def _collection_calls(s: Stack, who: Any, object_id: str) -> dict[str, Callable[[], Any]]:
    """Every call, through the gateway, that names the collection "Books" (streams read to
    their end; ImportObjects sends one message)."""
    near = ret_pb.NearVector(vector=vector(0))
    generate = gw_pb.Generate(single_prompt="{title}", grouped_task="which?")
    ids = gw_pb.ObjectIds(ids=[object_id])
    inline = gw_pb.InlineObjects(objects=[struct_pb2.Struct(fields={"title": _text("a")})])
    year = ret_pb.Filter(
        condition=ret_pb.Condition(
            property="year",
            operator=ret_pb.OPERATOR_GREATER_THAN,
            value=struct_pb2.Value(number_value=0),
        )
    )
    chunks = [ret_pb.ChunkRange(document=struct_pb2.Value(number_value=1))]
    semantic = gw_pb.SemanticCache(mode=gw_pb.CACHE_MODE_USE)
    r, g = s.retrieval, s.stub

    async def one_import() -> AsyncIterator[ret_pb.ImportObjectsRequest]:
        yield ret_pb.ImportObjectsRequest(
            collection="Books", objects=[ret_pb.DataObject(vector=vector(1))]
        )

    def req(kind: type, **fields: Any) -> Any:
        return kind(collection="Books", **fields)

    m = {"metadata": who}
    return {
        "GetCollection": lambda: r.GetCollection(ret_pb.GetCollectionRequest(name="Books"), **m),
        "UpsertObjects": lambda: r.UpsertObjects(
            req(ret_pb.UpsertObjectsRequest, objects=[ret_pb.DataObject(vector=vector(1))]), **m
        ),
        "ImportObjects": lambda: r.ImportObjects(one_import(), **m),
        "GetObject": lambda: r.GetObject(req(ret_pb.GetObjectRequest, id=object_id), **m),
        "BatchGetObjects": lambda: r.BatchGetObjects(
            req(ret_pb.BatchGetObjectsRequest, ids=[object_id]), **m
        ),
        "DeleteObjects": lambda: r.DeleteObjects(
            req(ret_pb.DeleteObjectsRequest, ids=[object_id]), **m
        ),
        "DeleteObjects filter": lambda: r.DeleteObjects(
            req(ret_pb.DeleteObjectsRequest, filter=year), **m
        ),
        "CountObjects": lambda: r.CountObjects(req(ret_pb.CountObjectsRequest), **m),
        "Search": lambda: r.Search(req(ret_pb.SearchRequest, near_vector=near), **m),
        "Search keyword, filter": lambda: r.Search(
            req(ret_pb.SearchRequest, keyword=ret_pb.Keyword(text="dune"), filter=year), **m
        ),
        "GetChunks": lambda: r.GetChunks(req(ret_pb.GetChunksRequest, ranges=chunks), **m),
        "GenerativeSearch": lambda: g.GenerativeSearch(
            req(gw_pb.GenerativeSearchRequest, near_vector=near, generate=generate), **m
        ),
        "StreamGenerativeSearch": lambda: g.StreamGenerativeSearch(
            req(gw_pb.StreamGenerativeSearchRequest, near_vector=near, generate=generate), **m
        ),
        "GenerateOnObjects ids": lambda: g.GenerateOnObjects(
            req(gw_pb.GenerateOnObjectsRequest, ids=ids, generate=generate), **m
        ),
        "GenerateOnObjects inline": lambda: g.GenerateOnObjects(
            req(gw_pb.GenerateOnObjectsRequest, inline=inline, generate=generate), **m
        ),
        "StreamGenerateOnObjects": lambda: g.StreamGenerateOnObjects(
            req(gw_pb.StreamGenerateOnObjectsRequest, ids=ids, generate=generate), **m
        ),
        "Ask": lambda: g.Ask(req(gw_pb.AskRequest, llm_question="q"), **m),
        "Ask new conversation": lambda: g.Ask(
            req(gw_pb.AskRequest, llm_question="q", new_conversation=True), **m
        ),
        "Ask semantic cache": lambda: g.Ask(
            req(gw_pb.AskRequest, llm_question="q", semantic_cache=semantic), **m
        ),
        "StreamAsk": lambda: g.StreamAsk(req(gw_pb.StreamAskRequest, llm_question="q"), **m),
        "DeleteCollection": lambda: r.DeleteCollection(
            ret_pb.DeleteCollectionRequest(name="Books"), **m
        ),
    }


async def test_every_call_on_another_tenants_collection_answers_as_before_it_existed(
    tenants: Stack,
) -> None:
    """The same calls of one caller on the name "Books", before and after another tenant
    creates a "Books": every answer the same, code, message and every rich detail field by
    field (nothing learnt of the other tenant's collection, its schema or its objects)."""
    s = tenants
    unknown = str(uuid.uuid4())
    before = {
        name: whole_answer(await failure_of(call()))
        for name, call in _collection_calls(s, BOB, unknown).items()
    }
    await create_books(s, metadata=ALICE)
    after = {
        name: whole_answer(await failure_of(call()))
        for name, call in _collection_calls(s, BOB, unknown).items()
    }
    assert after == before
    assert {answer[0] for answer in before.values()} == {grpc.StatusCode.NOT_FOUND}
    got = await s.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=ALICE
    )
    assert got.count == len(BOOKS)  # and nothing of Alice's was touched
    assert s.fake.chat_requests == []


async def test_another_tenants_object_ids_are_unknown_ids_in_a_namesake(tenants: Stack) -> None:
    """Alice's object ids, sent to Bob's own collection of the same name (its objects alike),
    read as ids nobody wrote: missing alone in a BatchGet with Bob's own, and each call that
    names one answers as for an unknown id (message and details, the id made equal)."""
    s = tenants
    alices = await create_books(s, metadata=ALICE)
    bobs = await create_books(s, metadata=BOB)
    got = await s.retrieval.BatchGetObjects(
        ret_pb.BatchGetObjectsRequest(collection="Books", ids=[bobs[0], alices[1], bobs[2]]),
        metadata=BOB,
    )
    assert [o.id for o in got.objects] == [bobs[0], bobs[2]]
    assert list(got.missing_ids) == [alices[1]]
    unknown = str(uuid.uuid4())
    for name in ("GetObject", "GenerateOnObjects ids", "StreamGenerateOnObjects"):
        theirs = _collection_calls(s, BOB, alices[1])[name]()
        nobodys = _collection_calls(s, BOB, unknown)[name]()
        if name == "GetObject":
            assert whole_answer(await failure_of(theirs), alices[1]) == whole_answer(
                await failure_of(nobodys), unknown
            )
            continue
        seen = [str(x).replace(alices[1], "<id>") for x in await _all(theirs)]
        assert seen == [str(x).replace(unknown, "<id>") for x in await _all(nobodys)]
        assert "OBJECT_NOT_FOUND" in "".join(seen)
    deleted = await s.retrieval.DeleteObjects(
        ret_pb.DeleteObjectsRequest(collection="Books", ids=alices), metadata=BOB
    )
    assert deleted.deleted_count == 0
    counts = [
        (
            await s.retrieval.CountObjects(
                ret_pb.CountObjectsRequest(collection="Books"), metadata=who
            )
        ).count
        for who in (ALICE, BOB)
    ]
    assert counts == [len(BOOKS), len(BOOKS)]


async def _all(call: Any) -> list[Any]:
    """A unary call's answer, or a server stream's messages (usage and timings dropped)."""
    if isinstance(call, grpc.aio.UnaryStreamCall):
        messages = [m async for m in call]
    else:
        messages = [await call]
    for message in messages:
        for name in ("usage", "done"):
            if message.DESCRIPTOR.fields_by_name.get(name) and message.HasField(name):
                message.ClearField(name)
    return messages


class _As:
    """A stub whose calls carry ``who``'s metadata."""

    def __init__(self, stub: Any, who: Any) -> None:
        self._stub, self._who = stub, who

    def __getattr__(self, name: str) -> Callable[[Any], Any]:
        return lambda request: getattr(self._stub, name)(request, metadata=self._who)


def _memory_calls(
    s: Stack, who: Any, cid: str, iid: str, token: str
) -> dict[str, Callable[[], Any]]:
    """Every memory call, through the gateway and as ``who``, that names conversation
    ``cid`` or turn ``iid`` (with ``token``, a page token their owner was given)."""
    m, gateway = _As(s.memory, who), _As(s.stub, who)

    def mask(*paths: str) -> field_mask_pb2.FieldMask:
        return field_mask_pb2.FieldMask(paths=paths)

    summary = {"conversation_id": cid, "text": "t", "through_interaction_id": iid}
    rid = "0123456789abcdef0123456789abcdef"
    return {
        "GetConversation": lambda: m.GetConversation(
            mem_pb.GetConversationRequest(conversation_id=cid)
        ),
        "UpdateConversation name": lambda: m.UpdateConversation(
            mem_pb.UpdateConversationRequest(
                conversation_id=cid, name="n", update_mask=mask("name")
            )
        ),
        "UpdateConversation ttl": lambda: m.UpdateConversation(
            mem_pb.UpdateConversationRequest(
                conversation_id=cid, ttl=duration_pb2.Duration(seconds=60), update_mask=mask("ttl")
            )
        ),
        "UpdateConversation no mask": lambda: m.UpdateConversation(
            mem_pb.UpdateConversationRequest(conversation_id=cid)
        ),
        "UpdateConversation fixed field": lambda: m.UpdateConversation(
            mem_pb.UpdateConversationRequest(conversation_id=cid, update_mask=mask("user"))
        ),
        "UpdateConversationSummary": lambda: m.UpdateConversationSummary(
            mem_pb.UpdateConversationSummaryRequest(**summary)
        ),
        "UpdateConversationSummary expected": lambda: m.UpdateConversationSummary(
            mem_pb.UpdateConversationSummaryRequest(**summary, expected_through_interaction_id=iid)
        ),
        "ListInteractions": lambda: m.ListInteractions(
            mem_pb.ListInteractionsRequest(conversation_id=cid)
        ),
        "ListInteractions page token": lambda: m.ListInteractions(
            mem_pb.ListInteractionsRequest(conversation_id=cid, page_token=token)
        ),
        "CreateInteraction": lambda: m.CreateInteraction(
            mem_pb.CreateInteractionRequest(conversation_id=cid, input="x", response="y")
        ),
        "CreateInteraction request_id": lambda: m.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=cid, input="x", response="y", request_id=rid
            )
        ),
        "CheckStorage": lambda: m.CheckStorage(
            mem_pb.CheckStorageRequest(conversation_id=cid, bytes=10)
        ),
        "CheckStorage summary": lambda: m.CheckStorage(
            mem_pb.CheckStorageRequest(conversation_id=cid, bytes=10, summary=True)
        ),
        "CheckStorage request_id": lambda: m.CheckStorage(
            mem_pb.CheckStorageRequest(conversation_id=cid, bytes=10, request_id=rid)
        ),
        "GetInteraction": lambda: m.GetInteraction(
            mem_pb.GetInteractionRequest(interaction_id=iid)
        ),
        "UpdateInteraction": lambda: m.UpdateInteraction(
            mem_pb.UpdateInteractionRequest(
                interaction=mem_pb.Interaction(
                    interaction_id=iid, additional_info=struct_pb2.Struct()
                )
            )
        ),
        "ListInteractionTraces": lambda: m.ListInteractionTraces(
            mem_pb.ListInteractionTracesRequest(interaction_id=iid)
        ),
        "Ask request_id": lambda: gateway.Ask(
            gw_pb.AskRequest(
                collection="Books", llm_question="q", conversation_id=cid, request_id=rid
            )
        ),
        "DeleteInteraction": lambda: m.DeleteInteraction(
            mem_pb.DeleteInteractionRequest(interaction_id=iid)
        ),
        "DeleteConversation": lambda: m.DeleteConversation(
            mem_pb.DeleteConversationRequest(conversation_id=cid)
        ),
    }


async def test_every_memory_call_on_anothers_conversation_answers_as_on_a_missing_one(
    tenants: Stack,
) -> None:
    """Each memory call (and an Ask with a request_id) naming a conversation and turn of
    alice's, made by another user of her tenant or a namesake of another tenant: the same
    code, message and details (ids aside) as for ids that never existed, and alice's
    conversation unchanged. A guard (it passed before): the Ask alone was checked so."""
    s = tenants
    await create_books(s, metadata=ALICE)
    await create_books(s, metadata=ALICE_OF_GLOBEX)
    made = await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    for i in range(2):
        turn = mem_pb.CreateInteractionRequest(conversation_id=cid, input=f"q{i}", response="a")
        await s.memory.CreateInteraction(turn, metadata=ALICE)
    page = await s.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid, page_size=1), metadata=ALICE
    )
    iid, token = page.interactions[0].interaction_id, page.next_page_token
    missing = (str(uuid.uuid4()), str(uuid.uuid4()))
    before = await s.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    codes = set()
    for who in (RITA, ALICE_OF_GLOBEX):
        theirs = _memory_calls(s, who, cid, iid, token)
        none = _memory_calls(s, who, *missing, token)
        for name, call in theirs.items():
            got = whole_answer(await failure_of(call()), cid, iid)
            expected = whole_answer(await failure_of(none[name]()), *missing)
            assert got == expected, name
            codes.add(got[0])
    assert codes == {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT}
    after = await s.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert after == before
    listed = await s.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert [t.input for t in listed.interactions] == ["q1", "q0"]
