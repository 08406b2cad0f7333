"""The two legacy owners of one user name — alice of the tenant ``default`` and alice of
the tenant ``alice`` — share one key tag (``Owner.digest``: both keep the pre-tenant
sha256(user)), yet never each other's conversations: every RPC answers NOT_FOUND as for
a missing id, and lists leave the other's out. The pair can meet across key lists (here
memory's own key ``alice:ka`` is alice of ``alice``, and the gateway forwards alice of
``default``) and over time (an operator moving the name from one tenant to the other).

A conversation stored before the tenant was recorded (simulated by removing the
``tenant`` field with Redis directly: the hash the old code wrote) belongs to the one
legacy owner ``GENSEARCH_MEMORY_UNTENANTED_OWNER`` names (docs/memory.md#legacy-owners).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import field_mask_pb2

from services.common.auth import Identity, Role, forwarded_identity
from services.memory import keys, store
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import ALICE, INTERNAL_TOKEN, Memory, MemoryFactory, Target
from tests.memory.helpers import expect_error, script_server
from tests.memory.test_search_interactions import search_until
from tests.support.script_keys import ScriptKeys

NOT_FOUND = grpc.StatusCode.NOT_FOUND
Metadata = tuple[tuple[str, str], ...]


def as_(user: str, tenant: str) -> Metadata:
    return forwarded_identity(Identity(user, tenant, Role.WRITER), INTERNAL_TOKEN)


DEFAULT_ALICE = as_("alice", "default")  # forwarded by the gateway
OWN_ALICE = as_("alice", "alice")  # forwarded; ALICE (memory's own key) is the same owner
ACME_ALICE = as_("alice", "acme")


async def conversation_with_turn(memory: Memory, who: Metadata) -> tuple[str, str]:
    made = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(
            input="the sourdough question",
            response="the sourdough answer",
            request_id="r1",
            new_conversation=pb.CreateConversationRequest(name="private"),
        ),
        metadata=who,
    )
    return made.interaction.conversation_id, made.interaction.interaction_id


async def listed(memory: Memory, who: Metadata, page_size: int = 0) -> list[str]:
    """Every conversation id ``who`` lists, following page tokens (bounded)."""
    ids: list[str] = []
    token = ""
    for _ in range(100):
        page = await memory.stub.ListConversations(
            pb.ListConversationsRequest(page_size=page_size, page_token=token), metadata=who
        )
        ids += [c.conversation_id for c in page.conversations]
        token = page.next_page_token
        # A page with a token may be empty: the other owner's filled all it read
        # (docs/memory.md#legacy-owners).
        if not token:
            return ids
    raise AssertionError("paging did not end")


async def assert_not_theirs(memory: Memory, who: Metadata, cid: str, iid: str) -> None:
    """Every RPC of ``who`` on the conversation ``cid`` (turn ``iid``) is NOT_FOUND and
    its lists leave it out; nothing of it changes."""
    stub = memory.stub
    calls = [
        stub.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=who),
        stub.UpdateConversation(
            pb.UpdateConversationRequest(
                conversation_id=cid,
                name="taken",
                update_mask=field_mask_pb2.FieldMask(paths=["name"]),
            ),
            metadata=who,
        ),
        stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="x", response="y"),
            metadata=who,
        ),
        stub.ListInteractions(pb.ListInteractionsRequest(conversation_id=cid), metadata=who),
        stub.GetInteraction(pb.GetInteractionRequest(interaction_id=iid), metadata=who),
        stub.ListInteractionTraces(
            pb.ListInteractionTracesRequest(interaction_id=iid), metadata=who
        ),
        stub.UpdateInteraction(
            pb.UpdateInteractionRequest(
                interaction=pb.Interaction(interaction_id=iid),
                update_mask=field_mask_pb2.FieldMask(paths=["additional_info"]),
            ),
            metadata=who,
        ),
        stub.UpdateConversationSummary(
            pb.UpdateConversationSummaryRequest(
                conversation_id=cid, text="s", through_interaction_id=iid
            ),
            metadata=who,
        ),
        stub.CheckStorage(pb.CheckStorageRequest(conversation_id=cid, bytes=1), metadata=who),
        stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=cid), metadata=who),
    ]
    for call in calls:
        await expect_error(call, NOT_FOUND)
    assert cid not in await listed(memory, who)
    # A retry of the owner's request_id by the other one is a new turn, not the owner's.
    again = await stub.CreateInteraction(
        pb.CreateInteractionRequest(
            input="mine", request_id="r1", new_conversation=pb.CreateConversationRequest()
        ),
        metadata=who,
    )
    assert again.interaction.conversation_id != cid


async def assert_theirs(memory: Memory, who: Metadata, cid: str, iid: str) -> None:
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=who
    )
    assert got.conversation.name == "private"
    turns = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid), metadata=who
    )
    assert [t.interaction_id for t in turns.interactions] == [iid]
    assert cid in await listed(memory, who)


@pytest.mark.parametrize(
    ("creator", "other"),
    [
        (DEFAULT_ALICE, ALICE),  # across key lists: forwarded default, memory's own key
        (ALICE, DEFAULT_ALICE),
        (DEFAULT_ALICE, OWN_ALICE),  # both forwarded: the gateway's list changed over time
        (OWN_ALICE, DEFAULT_ALICE),
    ],
    ids=["default-then-key", "key-then-default", "default-then-own", "own-then-default"],
)
async def test_the_two_legacy_owners_of_a_name_keep_apart(
    memory: Memory, creator: Metadata, other: Metadata
) -> None:
    cid, iid = await conversation_with_turn(memory, creator)
    await assert_not_theirs(memory, other, cid, iid)
    # The creator's conversation is untouched by all of that.
    await assert_theirs(memory, creator, cid, iid)
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=creator
    )
    assert got.conversation.interaction_count == 1


async def test_search_keeps_the_two_legacy_owners_apart(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    memory = await memory_factory(
        search_index="keyword", data_dir=tmp_path, search_retry_seconds=0.2
    )
    cid, iid = await conversation_with_turn(memory, DEFAULT_ALICE)
    # Indexed in the background: once its owner finds it, the other must not.
    assert await search_until(memory, DEFAULT_ALICE, "sourdough", [iid]) == [iid]
    for who in (OWN_ALICE, ALICE):
        found = await memory.stub.SearchInteractions(
            pb.SearchInteractionsRequest(query="sourdough"), metadata=who
        )
        assert list(found.hits) == []
        await expect_error(
            memory.stub.SearchInteractions(
                pb.SearchInteractionsRequest(query="sourdough", conversation_id=cid),
                metadata=who,
            ),
            NOT_FOUND,
        )


async def test_lists_of_a_shared_tag_page_through_only_the_callers_own(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A page reads past at most LIST_SKIP of the other owner's members: small here, so
    # pages end early (some with none) and paging must still find every one.
    monkeypatch.setattr(store, "LIST_SKIP", 2)
    mine: list[str] = []
    theirs: list[str] = []
    for n in range(12):
        who, into = (DEFAULT_ALICE, mine) if n in (0, 5, 6) else (ALICE, theirs)
        made = await memory.stub.CreateConversation(
            pb.CreateConversationRequest(name=str(n)), metadata=who
        )
        into.append(made.conversation.conversation_id)
    for page_size in (1, 2, 100):
        assert await listed(memory, DEFAULT_ALICE, page_size) == mine[::-1]
        assert await listed(memory, ALICE, page_size) == theirs[::-1]


async def test_a_page_behind_many_of_the_other_owners_conversations_is_answered(
    memory: Memory, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice of ``default`` has one conversation, alice of ``alice`` (the same tag) many
    newer ones: every page of the first reads and declares at most page_size + 1 +
    LIST_SKIP members (two runs of hashes), the first ones empty with a next_page_token,
    until her conversation. Before, a page read on until its first item, declaring the
    hashes LIST_SKIP + page_size + 1 more a run: past RUN_ATTEMPTS runs, ABORTED
    (CONCURRENT_UPDATE) for a legal request, every time."""
    monkeypatch.setattr(store, "LIST_SKIP", 2)
    budget = 1 + 1 + 2  # page_size 1
    made = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(name="mine"), metadata=DEFAULT_ALICE
    )
    mine = made.conversation.conversation_id
    theirs = 20 * budget  # before: more runs of hashes than RUN_ATTEMPTS
    for n in range(theirs):
        await memory.stub.CreateConversation(
            pb.CreateConversationRequest(name=str(n)), metadata=ALICE
        )
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(
        Owner("default", "alice")
    )
    page_script = hashlib.sha1(store.lua_source("list_conversations").encode()).hexdigest()
    async with ScriptKeys(*script_server(target, tag)) as watch:
        assert await listed(memory, DEFAULT_ALICE, 1) == [mine]
        runs = [run for run in await watch.runs() if run.sha == page_script]
    # Not vacuous: paging took a page per budget of the other's members at least.
    assert len(runs) >= theirs // budget
    # Bounded per call: a run declares the list and at most the hashes of the members a
    # page reads and of those that may follow (list_conversations.lua's unsure).
    assert max(len(run.declared) for run in runs) <= 1 + 2 * budget
    assert len(await listed(memory, ALICE, 100)) == theirs


async def untenanted(memory: Memory, owner: Owner, cid: str) -> None:
    """Makes ``cid`` what the code before tenants were recorded wrote: the same hash
    without its ``tenant`` field (pre-change data, simulated with Redis directly)."""
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(owner)
    assert await memory.redis.hdel(keys.conversation(tag, cid), "tenant") == 1


async def test_a_conversation_without_a_tenant_belongs_to_the_default_tenants_owner(
    memory: Memory,
) -> None:
    cid, iid = await conversation_with_turn(memory, DEFAULT_ALICE)
    await untenanted(memory, Owner("default", "alice"), cid)
    await assert_not_theirs(memory, ALICE, cid, iid)
    await assert_not_theirs(memory, OWN_ALICE, cid, iid)
    await assert_theirs(memory, DEFAULT_ALICE, cid, iid)
    # Still the default owner's to write: a turn, then gone with its delete.
    await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="more"), metadata=DEFAULT_ALICE
    )
    await memory.stub.DeleteConversation(
        pb.DeleteConversationRequest(conversation_id=cid), metadata=DEFAULT_ALICE
    )
    assert cid not in await listed(memory, DEFAULT_ALICE)


async def test_untenanted_conversations_may_belong_to_the_own_tenants_owner(
    memory_factory: MemoryFactory,
) -> None:
    # A deployment whose keys were "alice:key" before tenants: alice of "alice" wrote them.
    memory = await memory_factory(untenanted_owner="own-tenant")
    cid, iid = await conversation_with_turn(memory, ALICE)
    await untenanted(memory, Owner("alice", "alice"), cid)
    await assert_not_theirs(memory, DEFAULT_ALICE, cid, iid)
    await assert_theirs(memory, ALICE, cid, iid)
    await assert_theirs(memory, OWN_ALICE, cid, iid)


async def test_an_owner_with_a_tag_of_its_own_keeps_its_untenanted_conversations(
    memory: Memory,
) -> None:
    # alice of acme hashes its tenant into its tag: whatever is there is its own.
    cid, iid = await conversation_with_turn(memory, ACME_ALICE)
    await untenanted(memory, Owner("acme", "alice"), cid)
    await assert_theirs(memory, ACME_ALICE, cid, iid)
    await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="more"), metadata=ACME_ALICE
    )


@pytest.mark.parametrize("untenanted_owner", ["default", "own-tenant"])
async def test_the_same_request_id_stays_each_legacy_owners_own(
    memory_factory: MemoryFactory, untenanted_owner: str
) -> None:
    # request_id keys live under the tag too: one owner's turn or reservation with a
    # request_id must neither answer nor overwrite nor hold the other's.
    memory = await memory_factory(untenanted_owner=untenanted_owner)
    cid, iid = await conversation_with_turn(memory, DEFAULT_ALICE)
    other, _ = await conversation_with_turn(memory, ALICE)  # the same request_id, "r1"
    assert other != cid
    retried = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(  # a retry: the same request (request_fingerprint)
            input="the sourdough question",
            response="the sourdough answer",
            request_id="r1",
            new_conversation=pb.CreateConversationRequest(name="private"),
        ),
        metadata=DEFAULT_ALICE,
    )
    assert (retried.interaction.conversation_id, retried.interaction.interaction_id) == (
        cid,
        iid,
    )
    assert sorted(await listed(memory, DEFAULT_ALICE)) == [cid]

    def claim(who: Metadata, token: str) -> Any:
        request = pb.CheckStorageRequest(
            bytes=1, request_id="r2", claim_token=token, claim_seconds=60
        )
        return memory.stub.CheckStorage(request, metadata=who)

    assert not (await claim(ALICE, "a")).request_id_in_use
    assert not (await claim(DEFAULT_ALICE, "b")).request_id_in_use
    assert (await claim(ALICE, "c")).request_id_in_use  # a's hold, not b's


async def test_eviction_deletes_the_apart_owners_request_id_key(memory: Memory) -> None:
    # The legacy owner that does not own untenanted conversations (alice of "alice" by
    # default) keeps its request_id keys as tag:t:req:<id>; evicting its turn
    # (forget_interaction, declared by store._declare_turns) must delete that key too.
    first = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(
            input="q1",
            request_id="evicted-r1",
            new_conversation=pb.CreateConversationRequest(
                name="short", max_turns=1, summary_disabled=True
            ),
        ),
        metadata=ALICE,
    )
    cid = first.interaction.conversation_id
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(
        Owner("alice", "alice")
    )
    apart = keys.request(tag, "evicted-r1", apart=True)
    assert await memory.redis.get(apart) == first.interaction.interaction_id.encode()
    await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="q2"), metadata=ALICE
    )
    assert await memory.redis.exists(keys.interaction(tag, first.interaction.interaction_id)) == 0
    assert await memory.redis.exists(apart) == 0


async def test_a_page_token_never_shows_the_other_owners_conversations(
    memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page that ends on the other owner's member (now every empty page of a legacy
    owner behind the other's) carried that member as its cursor, in the clear (signed,
    base64 of JSON): the other tenant's conversation id and update time, read by whoever
    decodes the token. Its conversations are NOT_FOUND exactly like missing ones."""
    monkeypatch.setattr(store, "LIST_SKIP", 2)
    await memory.stub.CreateConversation(
        pb.CreateConversationRequest(name="mine"), metadata=DEFAULT_ALICE
    )
    theirs = [
        (
            await memory.stub.CreateConversation(
                pb.CreateConversationRequest(name=str(n)), metadata=ALICE
            )
        ).conversation.conversation_id
        for n in range(8)
    ]
    page = await memory.stub.ListConversations(
        pb.ListConversationsRequest(page_size=1), metadata=DEFAULT_ALICE
    )
    assert not page.conversations and page.next_page_token  # ended on theirs
    token = page.next_page_token
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert not [cid for cid in theirs if cid.encode() in raw]
    # Still a token that goes on: paging reaches hers, and only hers.
    assert len(await listed(memory, DEFAULT_ALICE, 1)) == 1
