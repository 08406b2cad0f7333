"""Bad input of every field: the status code and the field named in ErrorInfo."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import duration_pb2, struct_pb2

from services.devlaunch.redis_server import RedisProcess
from tests.memory.conftest import ALICE, Memory, MemoryFactory
from tests.memory.helpers import expect_error
from tests.support.rpc import error_info

# Validation happens before the store is called: one backend shows it.
BACKENDS = ("standalone",)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
BAD_IDS = [
    "",
    "nope",
    "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9",
    "0190a6f2_8c4e_7b3a_9f1d_2e5c6a7b8c9d",
    "{0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d}",
    "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9z",
    "../../etc",
    "x" * 10_000,
]


# Tiny limits, so every limit can be hit cheaply.
SMALL_LIMITS = {
    "max_text_bytes": 10,
    "max_prompt_template_bytes": 11,
    "max_name_bytes": 12,
    "max_origin_bytes": 13,
    "max_additional_info_bytes": 14,
    "max_request_id_bytes": 15,
}


@pytest.fixture
async def small(memory_factory: MemoryFactory) -> Memory:
    """A service with SMALL_LIMITS."""
    return await memory_factory(**SMALL_LIMITS)


async def _conversation(memory: Memory) -> str:
    answer = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    return answer.conversation.conversation_id


def _turn_in(memory: Memory, cid: str) -> Callable[..., Awaitable[object]]:
    """A CreateInteraction in conversation ``cid`` of the fields it is given."""

    def interaction(**fields: object) -> Awaitable[object]:
        return memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, **fields),  # type: ignore[arg-type]
            metadata=ALICE,
        )

    return interaction


async def test_bad_ids(memory: Memory) -> None:
    for bad in BAD_IDS:
        await _bad_ids(memory, bad)


async def _bad_ids(memory: Memory, bad: str) -> None:
    s = memory.stub
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: s.GetConversation(pb.GetConversationRequest(conversation_id=bad), metadata=ALICE),
        lambda: s.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=bad, name="n"), metadata=ALICE
        ),
        lambda: s.DeleteConversation(
            pb.DeleteConversationRequest(conversation_id=bad), metadata=ALICE
        ),
        lambda: s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=bad, input="i"), metadata=ALICE
        ),
        lambda: s.ListInteractions(pb.ListInteractionsRequest(conversation_id=bad), metadata=ALICE),
    ]
    for call in calls:
        await expect_error(call(), INVALID, "conversation_id")
    call = s.GetInteraction(pb.GetInteractionRequest(interaction_id=bad), metadata=ALICE)
    await expect_error(call, INVALID, "interaction_id")


async def test_text_limits(small: Memory) -> None:
    cid = await _conversation(small)
    s = small.stub
    interaction = _turn_in(small, cid)
    await expect_error(interaction(input="x" * 11), INVALID, "input")
    await expect_error(interaction(input="é" * 6), INVALID, "input")  # 12 bytes, 6 characters
    await expect_error(interaction(response="x" * 11), INVALID, "response")
    await expect_error(interaction(prompt_template="x" * 12), INVALID, "prompt_template")
    await expect_error(interaction(origin="x" * 14), INVALID, "origin")
    await expect_error(interaction(request_id="x" * 16), INVALID, "request_id")
    big = struct_pb2.Struct()
    big.update({"key": "a long enough value"})
    await expect_error(interaction(additional_info=big), INVALID, "additional_info")
    await expect_error(
        s.CreateConversation(pb.CreateConversationRequest(name="x" * 13), metadata=ALICE),
        INVALID,
        "name",
    )
    await expect_error(
        s.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=cid, name="x" * 13), metadata=ALICE
        ),
        INVALID,
        "name",
    )

    # Exactly at the limits is fine, and nothing was stored by the rejected calls.
    ok = await interaction(
        input="x" * 10, response="é" * 5, prompt_template="x" * 11, origin="x" * 13,
        request_id="x" * 15,
    )  # fmt: skip
    assert ok.interaction.response == "é" * 5  # type: ignore[attr-defined]
    conv = await s.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE)
    assert conv.conversation.interaction_count == 1


async def test_a_limit_refusal_names_its_bound_and_setting(memory_factory: MemoryFactory) -> None:
    """Each size or count limit past its value names the limit and the setting that sets
    it, as the owner's storage limit does (before: the field and the reason alone)."""
    m = await memory_factory(
        **SMALL_LIMITS, max_summary_bytes=16, max_traces=2, max_conversation_ttl_seconds=100
    )
    cid = await _conversation(m)
    s = m.stub
    interaction = _turn_in(m, cid)
    big = struct_pb2.Struct()
    big.update({"key": "a long enough value"})
    steps = [pb.Trace(step=pb.STEP_OTHER)] * 3
    for call, field, bound, setting in (
        (interaction(input="x" * 11), "input", ("limit_bytes", "10"), "MAX_TEXT_BYTES"),
        (interaction(response="x" * 11), "response", ("limit_bytes", "10"), "MAX_TEXT_BYTES"),
        (
            interaction(prompt_template="x" * 12),
            "prompt_template",
            ("limit_bytes", "11"),
            "MAX_PROMPT_TEMPLATE_BYTES",
        ),
        (interaction(origin="x" * 14), "origin", ("limit_bytes", "13"), "MAX_ORIGIN_BYTES"),
        (
            interaction(request_id="x" * 16),
            "request_id",
            ("limit_bytes", "15"),
            "MAX_REQUEST_ID_BYTES",
        ),
        (
            interaction(additional_info=big),
            "additional_info",
            ("limit_bytes", "14"),
            "MAX_ADDITIONAL_INFO_BYTES",
        ),
        (interaction(input="x", traces=steps), "traces", ("max", "2"), "MAX_TRACES"),
        (
            s.CreateConversation(pb.CreateConversationRequest(name="x" * 13), metadata=ALICE),
            "name",
            ("limit_bytes", "12"),
            "MAX_NAME_BYTES",
        ),
        (
            s.CreateConversation(
                pb.CreateConversationRequest(ttl=duration_pb2.Duration(seconds=101)),
                metadata=ALICE,
            ),
            "ttl",
            ("max_seconds", "100"),
            "MAX_CONVERSATION_TTL_SECONDS",
        ),
        (
            s.UpdateConversationSummary(
                pb.UpdateConversationSummaryRequest(conversation_id=cid, text="x" * 17),
                metadata=ALICE,
            ),
            "text",
            ("limit_bytes", "16"),
            "MAX_SUMMARY_BYTES",
        ),
    ):
        err = await expect_error(call, INVALID, field)
        metadata = dict(error_info(err).metadata)
        assert metadata.get(bound[0]) == bound[1], (field, metadata)
        assert metadata.get("setting") == f"GENSEARCH_MEMORY_{setting}", (field, metadata)


async def test_default_limit_is_one_mebibyte(memory: Memory) -> None:
    cid = await _conversation(memory)
    mib = 1024 * 1024
    ok = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="x" * mib, response="y" * mib),
        metadata=ALICE,
    )
    assert len(ok.interaction.input) == mib
    await expect_error(
        memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="x" * (mib + 1)), metadata=ALICE
        ),
        INVALID,
        "input",
    )


async def test_page_size(memory: Memory) -> None:
    cid = await _conversation(memory)
    for _ in range(105):
        await memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="i"), metadata=ALICE
        )
    s = memory.stub

    async def size(page_size: int) -> int:
        answer = await s.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=cid, page_size=page_size), metadata=ALICE
        )
        return len(answer.interactions)

    assert await size(0) == 10
    assert await size(1) == 1
    assert await size(100) == 100
    assert await size(101) == 100
    assert await size(2**31 - 1) == 100
    for bad in (-1, -(2**31)):
        await expect_error(
            s.ListInteractions(
                pb.ListInteractionsRequest(conversation_id=cid, page_size=bad), metadata=ALICE
            ),
            INVALID,
            "page_size",
        )
        await expect_error(
            s.ListConversations(pb.ListConversationsRequest(page_size=bad), metadata=ALICE),
            INVALID,
            "page_size",
        )


async def test_forged_tampered_and_foreign_page_tokens(memory: Memory) -> None:
    s = memory.stub
    a, b = await _conversation(memory), await _conversation(memory)
    for cid in (a, b):
        for _ in range(3):
            await s.CreateInteraction(
                pb.CreateInteractionRequest(conversation_id=cid, input="i"), metadata=ALICE
            )
    page = await s.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=a, page_size=1), metadata=ALICE
    )
    token = page.next_page_token
    assert token
    conv_page = await s.ListConversations(pb.ListConversationsRequest(page_size=1), metadata=ALICE)
    assert conv_page.next_page_token
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]

    bad_tokens = ["garbage", "!!!", flipped, token[:-1], "x" * 600, conv_page.next_page_token]
    for bad in bad_tokens:
        await expect_error(
            s.ListInteractions(
                pb.ListInteractionsRequest(conversation_id=a, page_token=bad), metadata=ALICE
            ),
            INVALID,
            "page_token",
        )
    # A token of conversation a does not page conversation b.
    await expect_error(
        s.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=b, page_token=token), metadata=ALICE
        ),
        INVALID,
        "page_token",
    )
    # An interactions token is no conversations token.
    await expect_error(
        s.ListConversations(pb.ListConversationsRequest(page_token=token), metadata=ALICE),
        INVALID,
        "page_token",
    )


async def test_a_token_is_accepted_only_as_issued(memory: Memory) -> None:
    """A page token is its exact issued text. base64 decoding skips characters outside
    its alphabet and ignores padding and a last character's unused bits, so before, a
    token with '==', a space, a newline or a '!' added, or its last character's spare
    bits set, read as the token it was made from: many texts per token (a forged token
    accepted), not one."""
    s = memory.stub
    cid = await _conversation(memory)
    for _ in range(3):
        await s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="i"), metadata=ALICE
        )
    page = await s.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_size=1), metadata=ALICE
    )
    token = page.next_page_token
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # 2 or 3 characters in the last group leave 4 or 2 bits unused: set one of them.
    spare = {2: 0b1111, 3: 0b11}.get(len(token) % 4, 0)
    variants = [token + "==", token + " ", token + "\n", token[:5] + "!" + token[5:]]
    if spare:
        variants.append(token[:-1] + alphabet[alphabet.index(token[-1]) ^ 1])
    for forged in variants:
        await expect_error(
            s.ListInteractions(
                pb.ListInteractionsRequest(conversation_id=cid, page_token=forged),
                metadata=ALICE,
            ),
            INVALID,
            "page_token",
        )
    # As issued, it pages on (with another page_size too: a token holds no page size).
    again = await s.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_size=5, page_token=token),
        metadata=ALICE,
    )
    assert len(again.interactions) == 2


async def test_malformed_page_token_is_invalid_while_redis_keeps_the_key_and_is_down(
    memory_factory: MemoryFactory, redis_server: RedisProcess
) -> None:
    """Without GENSEARCH_MEMORY_PAGE_TOKEN_SECRET the key is in Redis; with Redis down,
    a token that is not even of the issued form is still the caller's mistake
    (INVALID_ARGUMENT), not UNAVAILABLE: the checks that need no key come first."""
    await redis_server.stop()
    try:
        memory = await memory_factory()  # the key could not be fetched at start
        cid = "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d"
        for bad in ("garbage!", "x" * 600, "YWJj=="):
            calls = (
                memory.stub.ListConversations(
                    pb.ListConversationsRequest(page_token=bad), metadata=ALICE
                ),
                memory.stub.ListInteractions(
                    pb.ListInteractionsRequest(conversation_id=cid, page_token=bad),
                    metadata=ALICE,
                ),
            )
            for call in calls:
                err = await expect_error(call, INVALID, "page_token")
                assert error_info(err).reason == "INVALID_PAGE_TOKEN"
    finally:
        await redis_server.start()


async def test_tokens_from_another_secret_are_rejected(memory_factory: MemoryFactory) -> None:
    one = await memory_factory(page_token_secret="s" * 32)
    two = await memory_factory(page_token_secret="t" * 32)
    shared = await memory_factory()  # secret created once in Redis
    shared2 = await memory_factory()
    for _ in range(2):
        await one.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    for issuer, reader, accepted in ((one, two, False), (shared, shared2, True)):
        page = await issuer.stub.ListConversations(
            pb.ListConversationsRequest(page_size=1), metadata=ALICE
        )
        call = reader.stub.ListConversations(
            pb.ListConversationsRequest(page_token=page.next_page_token), metadata=ALICE
        )
        if accepted:
            assert len((await call).conversations) == 1
        else:
            await expect_error(call, INVALID, "page_token")


@pytest.mark.parametrize(
    "request_id", ["a\nb", "k\x00", "\x1b[2J", "key one", "clé", "k\u202e", "\x7f"]
)
async def test_a_request_id_of_other_than_visible_ascii_is_refused(
    memory: Memory, request_id: str
) -> None:
    """A request_id is an idempotency key that reaches logs and traces: control characters
    forged lines there, and spaces or non-ASCII make keys that read the same and differ.
    Refused in CreateInteraction and CheckStorage, naming request_id, nothing stored."""
    cid = await _conversation(memory)
    s = memory.stub
    err = await expect_error(
        s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="q", request_id=request_id),
            metadata=ALICE,
        ),
        INVALID,
        "request_id",
    )
    assert "U+" in (err.details() or "")
    await expect_error(
        s.CheckStorage(
            pb.CheckStorageRequest(conversation_id=cid, bytes=1, request_id=request_id),
            metadata=ALICE,
        ),
        INVALID,
        "request_id",
    )
    conv = await s.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE)
    assert conv.conversation.interaction_count == 0


async def test_request_ids_clients_send_are_accepted(memory: Memory) -> None:
    cid = await _conversation(memory)
    for request_id in (
        "5b0f6c1e-9d1a-4c57-8f0e-3a2b7c1d9e40",  # a UUID (AIP-155)
        "0b9e3c55f3a04c2b9e0d6c1f2a3b4c5d",  # the gateway's own: uuid4().hex
        "01HGW2N7EXAMPLE0000000000Z",  # a ULID
        "order:42/retry~1",
        "YWJj+ZGVm/Z2hp==",  # base64
    ):
        request = pb.CreateInteractionRequest(conversation_id=cid, input="q", request_id=request_id)
        made = await memory.stub.CreateInteraction(request, metadata=ALICE)
        again = await memory.stub.CreateInteraction(request, metadata=ALICE)  # a retry
        assert made.interaction.interaction_id == again.interaction.interaction_id


@pytest.mark.parametrize(
    "control",
    # C0, DEL, C1; then a right-to-left override and isolate and the line separator, which
    # make a name read otherwise than it is (found by review: they were stored as sent).
    ["\x00", "\n", "\t", "\x1b", "\x7f", "\x85", "\x9b", "\u202e", "\u2067", "\u2028"],
)
async def test_a_conversation_name_with_a_control_character_is_refused(
    memory: Memory, control: str
) -> None:
    """A display name: NUL, newline, ESC, DEL and the C1 controls were stored as sent and
    reached whoever listed the conversations. Refused where a name is set, naming the
    field where the request holds it and the character by code point and position."""
    s = memory.stub
    name = f"Trip{control}[31m"
    err = await expect_error(
        s.CreateConversation(pb.CreateConversationRequest(name=name), metadata=ALICE),
        INVALID,
        "name",
    )
    info = error_info(err)
    assert (info.reason, info.metadata["position"]) == ("CONTROL_CHARACTER", "4")
    assert f"U+{ord(control):04X} at position 4" in (err.details() or "")
    assert control not in (err.details() or "")
    made = await s.CreateConversation(pb.CreateConversationRequest(name="Trip ✈"), metadata=ALICE)
    cid = made.conversation.conversation_id
    await expect_error(
        s.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=cid, name=name), metadata=ALICE
        ),
        INVALID,
        "name",
    )
    starting = pb.CreateInteractionRequest(
        input="q", new_conversation=pb.CreateConversationRequest(name=name)
    )
    await expect_error(
        s.CreateInteraction(starting, metadata=ALICE), INVALID, "new_conversation.name"
    )
    listed = await s.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.name for c in listed.conversations] == ["Trip ✈"]


async def test_claim_token_bound_is_a_setting_the_refusal_names(
    memory_factory: MemoryFactory,
) -> None:
    # GENSEARCH_MEMORY_MAX_CLAIM_TOKEN_BYTES (was a fixed 64, named by no refusal).
    memory = await memory_factory(max_claim_token_bytes=40)
    cid = (
        await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    ).conversation.conversation_id

    def check(token: str) -> Any:
        request = pb.CheckStorageRequest(
            conversation_id=cid, bytes=1, request_id="k", claim_token=token, claim_seconds=60
        )
        return memory.stub.CheckStorage(request, metadata=ALICE)

    assert not (await check("a" * 40)).request_id_in_use
    err = await expect_error(check("b" * 41), INVALID, "claim_token")
    info = error_info(err)
    assert info.reason == "FIELD_TOO_LARGE"
    assert (info.metadata["limit_bytes"], info.metadata["setting"]) == (
        "40",
        "GENSEARCH_MEMORY_MAX_CLAIM_TOKEN_BYTES",
    )


async def test_claim_seconds_bound_is_a_setting_the_refusal_names(
    memory_factory: MemoryFactory,
) -> None:
    # GENSEARCH_MEMORY_MAX_CLAIM_SECONDS (was a fixed 3600, named by no refusal).
    memory = await memory_factory(max_claim_seconds=90)
    cid = (
        await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    ).conversation.conversation_id

    def check(seconds: int) -> Any:
        request = pb.CheckStorageRequest(
            conversation_id=cid,
            bytes=1,
            request_id="k",
            claim_token="t" * 32,
            claim_seconds=seconds,
        )
        return memory.stub.CheckStorage(request, metadata=ALICE)

    assert not (await check(90)).request_id_in_use
    err = await expect_error(check(91), INVALID, "claim_seconds")
    info = error_info(err)
    assert info.reason == "OUT_OF_RANGE"
    assert (info.metadata["max"], info.metadata["setting"]) == (
        "90",
        "GENSEARCH_MEMORY_MAX_CLAIM_SECONDS",
    )
    assert "GENSEARCH_MEMORY_MAX_CLAIM_SECONDS" in (err.details() or "")
