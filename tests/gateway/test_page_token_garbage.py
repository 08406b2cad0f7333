"""Every page token the system issues, edited or made up by a client, through the gateway:
ListCollections (retrieval: an unsigned cursor, safe to forge), ListConversations,
ListInteractions and ListInteractionTraces (memory: signed). Anything but a token the
service issued for this caller and this list is INVALID_ARGUMENT naming ``page_token``
(reason INVALID_PAGE_TOKEN) — never INTERNAL, never another tenant's or user's items —
except a well-formed collections cursor, which only picks where the caller's own list
starts (docs/retrieval.md: ListCollections pages). A genuine token is refused on any list
but its own, and is taken on its own (so the refusals are of the tokens, not of all).
Checked against broken verifiers (page_token.py without its MAC, holder, list-kind or
list-scope check): each fails a test here."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.gateway.conftest import ALICE, BOB, Stack
from tests.retrieval.conftest import vector_collection
from tests.support.rpc import error_info

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
# Garbage of every shape: any text, base64 of random bytes, base64 of junk JSON (with and
# without the collections cursor's prefix), negative offsets, very long ones.
garbage = st.one_of(
    st.text(min_size=1, max_size=300),
    st.binary(min_size=1, max_size=300).map(_b64),
    _json.map(lambda v: _b64(json.dumps(v).encode())),
    _json.map(lambda v: _b64(b"c1:" + json.dumps(v).encode())),
    st.integers(max_value=-1).map(lambda n: _b64(str(n).encode())),
    st.integers(max_value=-1).map(lambda n: _b64(json.dumps([2, "c", "", "x", n]).encode())),
    st.integers(min_value=513, max_value=20_000).map(lambda n: "A" * n),
)


async def _issued(stack: Stack) -> dict[str, Any]:
    """Alice's collections and conversations, two of each, and the tokens of their first
    pages of one."""
    for name in ("Apple", "Banana"):
        await stack.retrieval.CreateCollection(
            ret_pb.CreateCollectionRequest(collection=vector_collection(name)), metadata=ALICE
        )
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(collection=vector_collection("BobsOwn")), metadata=BOB
    )
    cids = []
    for _ in range(2):
        made = await stack.memory.CreateConversation(
            mem_pb.CreateConversationRequest(), metadata=ALICE
        )
        cids.append(made.conversation.conversation_id)
    iids = []
    for text in ("one", "two"):
        turn = await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(conversation_id=cids[0], input=text), metadata=ALICE
        )
        iids.append(turn.interaction.interaction_id)
    cols = await stack.retrieval.ListCollections(
        ret_pb.ListCollectionsRequest(page_size=1), metadata=ALICE
    )
    convs = await stack.memory.ListConversations(
        mem_pb.ListConversationsRequest(page_size=1), metadata=ALICE
    )
    turns = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cids[0], page_size=1), metadata=ALICE
    )
    assert cols.next_page_token and convs.next_page_token and turns.next_page_token
    return {
        "cid": cids[0],
        "other_cid": cids[1],
        "iid": iids[0],
        "collections": cols.next_page_token,
        "conversations": convs.next_page_token,
        "interactions": turns.next_page_token,
    }


def _calls(stack: Stack, made: dict[str, Any], token: str, who: Any) -> dict[str, Any]:
    return {
        "collections": stack.retrieval.ListCollections(
            ret_pb.ListCollectionsRequest(page_token=token), metadata=who
        ),
        "conversations": stack.memory.ListConversations(
            mem_pb.ListConversationsRequest(page_token=token), metadata=who
        ),
        "interactions": stack.memory.ListInteractions(
            mem_pb.ListInteractionsRequest(conversation_id=made["cid"], page_token=token),
            metadata=who,
        ),
        "traces": stack.memory.ListInteractionTraces(
            mem_pb.ListInteractionTracesRequest(interaction_id=made["iid"], page_token=token),
            metadata=who,
        ),
    }


async def _check(stack: Stack, made: dict[str, Any], token: str, who: Any = ALICE) -> None:
    for name, call in _calls(stack, made, token, who).items():
        try:
            answer = await call
        except grpc.aio.AioRpcError as err:
            if who is BOB and err.code() == grpc.StatusCode.NOT_FOUND:
                # Alice's conversation, as bob sees it: missing (whatever the token).
                assert name in ("interactions", "traces"), (name, err.details())
                continue
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.details())
            info = error_info(err)
            assert info.metadata["field"] == "page_token", (name, err.details())
            assert info.reason == "INVALID_PAGE_TOKEN", (name, info.reason)
            continue
        # Only a collections cursor of the issued form goes through, and then only over
        # the caller's own collections.
        assert name == "collections", (name, token[:60])
        mine = {"Apple", "Banana"} if who is ALICE else {"BobsOwn"}
        assert {c.name for c in answer.collections} <= mine, token[:60]


async def _own_pages(stack: Stack, made: dict[str, Any]) -> None:
    """Each issued token, unedited, is taken by its own list for its own caller (the second
    of two items): the refusals below are of the edits, not of every token."""
    cols = await stack.retrieval.ListCollections(
        ret_pb.ListCollectionsRequest(page_size=1, page_token=made["collections"]),
        metadata=ALICE,
    )
    convs = await stack.memory.ListConversations(
        mem_pb.ListConversationsRequest(page_size=1, page_token=made["conversations"]),
        metadata=ALICE,
    )
    turns = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(
            conversation_id=made["cid"], page_size=1, page_token=made["interactions"]
        ),
        metadata=ALICE,
    )
    assert (len(cols.collections), len(convs.conversations), len(turns.interactions)) == (
        1,
        1,
        1,
    )


async def test_garbage_and_edited_page_tokens_are_refused(stack: Stack) -> None:
    made = await _issued(stack)
    await _own_pages(stack, made)
    loop = asyncio.get_running_loop()

    @EXAMPLES
    @given(garbage)
    @example("A" * 70_000)  # far past every token's length bound
    @example(_b64(b"c1:-1"))
    def check(token: str) -> None:
        asyncio.run_coroutine_threadsafe(_check(stack, made, token), loop).result()

    await asyncio.to_thread(check)

    # Every one-character edit of every issued token.
    alphabet = "A_"  # two replacements per position: one always differs
    for kind in ("collections", "conversations", "interactions"):
        issued = made[kind]
        for i in range(len(issued)):
            for ch in alphabet:
                if ch != issued[i]:
                    await _check(stack, made, issued[:i] + ch + issued[i + 1 :])


async def test_another_callers_tokens_show_nothing_of_the_issuers(stack: Stack) -> None:
    made = await _issued(stack)
    for kind in ("collections", "conversations", "interactions"):
        await _check(stack, made, made[kind], who=BOB)
    # Bob's own list from alice's collections cursor: his collection, nothing of hers.
    page = await stack.retrieval.ListCollections(
        ret_pb.ListCollectionsRequest(page_token=made["collections"]), metadata=BOB
    )
    assert [c.name for c in page.collections] == ["BobsOwn"]


async def _refused_as_another_lists(call: Any, what: str) -> None:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, err.details())
        info = error_info(err)
        assert (info.reason, info.metadata["field"]) == ("INVALID_PAGE_TOKEN", "page_token")
        return
    raise AssertionError(f"{what}: a page token of another list was taken")


async def test_a_token_is_refused_by_every_other_list(stack: Stack) -> None:
    # Genuine, unedited and presented by the caller it was issued to, a token still names
    # one list: the conversations list, or the interactions of one conversation. Taken by
    # another list, its cursor (another list's sort key) would pick that list's start.
    made = await _issued(stack)
    await _own_pages(stack, made)
    for kind in ("collections", "conversations", "interactions"):
        for name, call in _calls(stack, made, made[kind], ALICE).items():
            if name != kind:
                await _refused_as_another_lists(call, f"a {kind} token on {name}")
    # The interactions of another conversation of the same caller.
    other = stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(
            conversation_id=made["other_cid"], page_token=made["interactions"]
        ),
        metadata=ALICE,
    )
    await _refused_as_another_lists(other, "an interactions token on another conversation")
