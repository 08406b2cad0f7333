"""The production layout an operator deploys (docs/deploy.md): the keys file on the
gateway alone, memory, retrieval and generation with the internal token and no keys. Three
callers — tenant A's admin, tenant A's reader, tenant B's user — and each documented
permission: readers neither write nor create; B meets A's collections, objects and
conversations as NOT_FOUND, the same answer as for missing ones; a key removed from the
file is refused after the restart the docs ask for, and two keys of one user (rotation)
are valid at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import DIM, Stack, StackFactory, create_books, vector
from tests.support.rpc import error_info

FILE = """keys:
  - {key: "key-ann-acme", user: ann, tenant: acme, role: admin}
  - {key: "key-ann-acme-new", user: ann, tenant: acme, role: admin}
  - {key: "key-rae-acme", user: rae, tenant: acme, role: reader}
  - {key: "key-bo-globex", user: bo, tenant: globex, role: admin}
"""
ANN, ANN_NEW = (
    (("authorization", "Bearer key-ann-acme"),),
    (("authorization", "Bearer key-ann-acme-new"),),
)
RAE, BO = (("authorization", "Bearer key-rae-acme"),), (("authorization", "Bearer key-bo-globex"),)
MISSING_ID = "0190a4b2-0000-7000-8000-000000000000"


def _revoke(path: Path, key: str) -> None:
    """The keys file without the entry of ``key``, as the operator edits it."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(x for x in lines if f'"{key}"' not in x), encoding="utf-8")


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys.yaml"
    path.write_text(FILE, encoding="utf-8")
    return path


@pytest.fixture
async def prod(stack_factory: StackFactory, keys_file: Path) -> Stack:
    return await stack_factory(api_keys="", api_keys_file=keys_file)


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def answer(err: grpc.aio.AioRpcError, *names: str) -> tuple[object, ...]:
    """What a caller learns from a refusal, with the names it sent made equal."""

    def same(text: str) -> str:
        for name in names:
            text = text.replace(name, "X")
        return text

    info = error_info(err)
    meta = sorted((k, same(v)) for k, v in info.metadata.items())
    return err.code(), same(err.details() or ""), info.reason, meta


async def test_readers_neither_write_nor_create(prod: Stack) -> None:
    s = prod
    await create_books(s, metadata=ANN)
    collection = ret_pb.Collection(
        name="Other",
        vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
    )
    upsert = ret_pb.UpsertObjectsRequest(
        collection="Books", objects=[ret_pb.DataObject(vector=vector(1))]
    )
    for call, needed in (
        (
            s.retrieval.CreateCollection(
                ret_pb.CreateCollectionRequest(collection=collection), metadata=RAE
            ),
            "admin",
        ),
        (
            s.retrieval.DeleteCollection(
                ret_pb.DeleteCollectionRequest(name="Books"), metadata=RAE
            ),
            "admin",
        ),
        (s.retrieval.UpsertObjects(upsert, metadata=RAE), "writer"),
        (
            s.retrieval.DeleteObjects(
                ret_pb.DeleteObjectsRequest(collection="Books", ids=[MISSING_ID]), metadata=RAE
            ),
            "writer",
        ),
    ):
        err = await failure(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
        info = error_info(err)
        assert (info.reason, dict(info.metadata)) == (
            "ROLE_REQUIRED",
            {"required_role": needed, "role": "reader"},
        )
    counted = await s.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=RAE
    )
    assert counted.count == 5


async def test_another_tenants_things_are_not_found_like_missing_ones(prod: Stack) -> None:
    s = prod
    ids = await create_books(s, metadata=ANN)
    made = await s.memory.CreateConversation(
        mem_pb.CreateConversationRequest(name="a"), metadata=ANN
    )
    cid = made.conversation.conversation_id
    turn = await s.memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(conversation_id=cid, input="q", response="a"), metadata=ANN
    )
    iid = turn.interaction.interaction_id
    missing_cid = "0190a4b2-0000-7000-8000-0000000000ff"
    missing_iid = "0190a4b2-0000-7000-8000-0000000000fe"

    def retrieval_calls(name: str, oid: str, who: Any) -> list[Any]:
        return [
            s.retrieval.GetCollection(ret_pb.GetCollectionRequest(name=name), metadata=who),
            s.retrieval.GetObject(ret_pb.GetObjectRequest(collection=name, id=oid), metadata=who),
            s.retrieval.BatchGetObjects(
                ret_pb.BatchGetObjectsRequest(collection=name, ids=[oid]), metadata=who
            ),
            s.retrieval.CountObjects(ret_pb.CountObjectsRequest(collection=name), metadata=who),
            s.retrieval.DeleteObjects(
                ret_pb.DeleteObjectsRequest(collection=name, ids=[oid]), metadata=who
            ),
            s.retrieval.UpsertObjects(
                ret_pb.UpsertObjectsRequest(
                    collection=name, objects=[ret_pb.DataObject(vector=vector(1))]
                ),
                metadata=who,
            ),
            s.retrieval.DeleteCollection(ret_pb.DeleteCollectionRequest(name=name), metadata=who),
        ]

    def memory_calls(c: str, i: str, who: Any) -> list[Any]:
        return [
            s.memory.GetConversation(
                mem_pb.GetConversationRequest(conversation_id=c), metadata=who
            ),
            s.memory.UpdateConversation(
                mem_pb.UpdateConversationRequest(conversation_id=c, name="x"), metadata=who
            ),
            s.memory.ListInteractions(
                mem_pb.ListInteractionsRequest(conversation_id=c), metadata=who
            ),
            s.memory.CreateInteraction(
                mem_pb.CreateInteractionRequest(conversation_id=c, input="q", response="a"),
                metadata=who,
            ),
            s.memory.GetInteraction(mem_pb.GetInteractionRequest(interaction_id=i), metadata=who),
            s.memory.DeleteConversation(
                mem_pb.DeleteConversationRequest(conversation_id=c), metadata=who
            ),
        ]

    for theirs, missing in zip(
        retrieval_calls("Books", ids[0], BO), retrieval_calls("Nope", ids[0], BO), strict=True
    ):
        got, expected = await failure(theirs), await failure(missing)
        assert got.code() == grpc.StatusCode.NOT_FOUND, got.details()
        assert answer(got, "Books") == answer(expected, "Nope")
    for who in (BO, RAE):  # another tenant's, and another user's of the same tenant
        for theirs, missing in zip(
            memory_calls(cid, iid, who), memory_calls(missing_cid, missing_iid, who), strict=True
        ):
            got, expected = await failure(theirs), await failure(missing)
            assert got.code() == grpc.StatusCode.NOT_FOUND, got.details()
            assert answer(got, cid, iid) == answer(expected, missing_cid, missing_iid)
    # Untouched for its owner.
    kept = await s.retrieval.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=ANN
    )
    assert kept.count == 5
    await s.memory.GetInteraction(mem_pb.GetInteractionRequest(interaction_id=iid), metadata=ANN)


async def test_rotation_two_keys_at_once_then_the_old_one_refused(
    stack_factory: StackFactory, keys_file: Path
) -> None:
    s = await stack_factory(api_keys="", api_keys_file=keys_file)
    made = await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ANN)
    cid = made.conversation.conversation_id
    # Both of ann's keys are ann: the conversation made with one is read with the other.
    await s.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=cid), metadata=ANN_NEW
    )
    # The old key removed, the gateway restarted (the file is read at start).
    _revoke(keys_file, "key-ann-acme")
    s = await stack_factory(api_keys="", api_keys_file=keys_file)
    err = await failure(s.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ANN))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert error_info(err).reason == "INVALID_API_KEY"
    assert "key-ann-acme" not in (err.details() or "")
    await s.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ANN_NEW)


async def test_another_callers_page_token_is_answered_like_a_forged_one(prod: Stack) -> None:
    """A page token replayed by another user of the tenant or by another tenant gets the
    answer of a token nobody issued, field by field (it used to say "issued to another
    caller": that the token is genuine and someone else's)."""
    s = prod
    made = await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ANN)
    cid = made.conversation.conversation_id
    await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ANN)
    for _ in range(2):
        await s.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(conversation_id=cid, input="q", response="a"),
            metadata=ANN,
        )
    listed = await s.memory.ListConversations(
        mem_pb.ListConversationsRequest(page_size=1), metadata=ANN
    )
    turns = await s.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid, page_size=1), metadata=ANN
    )
    for who in (RAE, BO):
        own = await s.memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=who)
        own_cid = own.conversation.conversation_id

        def calls(
            conversations: str, interactions: str, who: Any = who, own_cid: str = own_cid
        ) -> list[Any]:
            return [
                s.memory.ListConversations(
                    mem_pb.ListConversationsRequest(page_size=1, page_token=conversations),
                    metadata=who,
                ),
                s.memory.ListInteractions(
                    mem_pb.ListInteractionsRequest(
                        conversation_id=own_cid, page_size=1, page_token=interactions
                    ),
                    metadata=who,
                ),
            ]

        # The same length and alphabet, one character changed: its signature fails.
        forged = [_tampered(listed.next_page_token), _tampered(turns.next_page_token)]
        for theirs, nobodys in zip(
            calls(listed.next_page_token, turns.next_page_token), calls(*forged), strict=True
        ):
            got, expected = await failure(theirs), await failure(nobodys)
            assert got.code() == grpc.StatusCode.INVALID_ARGUMENT, got.details()
            assert error_info(got).reason == "INVALID_PAGE_TOKEN"
            assert answer(got) == answer(expected)


def _tampered(token: str) -> str:
    return token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
