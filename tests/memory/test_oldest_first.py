"""ListInteractions oldest first and after a position (``oldest_first``,
``after_interaction_id``): what a rolling summary's fold reads, the turns right after the
summary's end, without the rest of the conversation. Paged by the same keyset tokens as
the newest-first list, each token bound to its order and position; another user's
conversation is NOT_FOUND exactly like a missing one. On a standalone Redis and on the
three-master cluster (conftest)."""

from __future__ import annotations

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb

from tests.memory.conftest import ALICE, BOB, Memory, MemoryFactory
from tests.memory.helpers import conversation_with_turns, expect_error
from tests.support.rpc import bad_request_field, error_info, whole_answer

# A UUIDv7 older than any turn a test writes (2024), and one newer (2100).
BEFORE_ALL = "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d"
AFTER_ALL = "ffffffff-ffff-7fff-bfff-ffffffffffff"


async def _pages(
    memory: Memory, cid: str, size: int, *, oldest_first: bool = False, after: str = ""
) -> list[list[str]]:
    """Every page of the listing, followed to its end: each page's inputs."""
    pages: list[list[str]] = []
    token = ""
    for _ in range(50):  # bounded: a cursor that never ends fails, not hangs
        page = await memory.stub.ListInteractions(
            pb.ListInteractionsRequest(
                conversation_id=cid,
                page_size=size,
                page_token=token,
                oldest_first=oldest_first,
                after_interaction_id=after,
            ),
            metadata=ALICE,
        )
        assert page.oldest_first == oldest_first  # says which order it took
        pages.append([i.input for i in page.interactions])
        token = page.next_page_token
        if not token:
            return pages
    raise AssertionError("paging never ended")


async def test_oldest_first_pages_after_a_position(memory: Memory) -> None:
    cid, ids = await conversation_with_turns(memory.stub, "t", 7, ALICE)
    assert await _pages(memory, cid, 3, oldest_first=True) == [
        ["t0", "t1", "t2"],
        ["t3", "t4", "t5"],
        ["t6"],
    ]
    assert await _pages(memory, cid, 3, oldest_first=True, after=ids[2]) == [
        ["t3", "t4", "t5"],
        ["t6"],
    ]
    # The bound holds newest first too, on every page.
    assert await _pages(memory, cid, 2, after=ids[2]) == [["t6", "t5"], ["t4", "t3"]]
    # Unchanged without the new fields.
    assert await _pages(memory, cid, 4) == [["t6", "t5", "t4", "t3"], ["t2", "t1", "t0"]]
    # A position, not a look-up: before every turn, past every turn, a turn deleted since.
    assert await _pages(memory, cid, 10, oldest_first=True, after=BEFORE_ALL) == [
        [f"t{n}" for n in range(7)]
    ]
    assert await _pages(memory, cid, 10, oldest_first=True, after=AFTER_ALL) == [[]]
    await memory.stub.DeleteInteraction(
        pb.DeleteInteractionRequest(interaction_id=ids[3]), metadata=ALICE
    )
    assert await _pages(memory, cid, 2, oldest_first=True, after=ids[3]) == [["t4", "t5"], ["t6"]]
    # Upper-case, as parsed elsewhere: the same position.
    assert await _pages(memory, cid, 10, oldest_first=True, after=ids[4].upper()) == [["t5", "t6"]]


async def test_turns_written_while_paging_oldest_first_come_last(memory: Memory) -> None:
    """Keyset paging oldest first: a turn written between two pages is newer than every
    listed one, so it ends the listing; nothing is skipped or repeated."""
    cid, _ = await conversation_with_turns(memory.stub, "t", 5, ALICE)
    first = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_size=3, oldest_first=True),
        metadata=ALICE,
    )
    await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input="late"), metadata=ALICE
    )
    rest = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(
            conversation_id=cid,
            page_size=10,
            oldest_first=True,
            page_token=first.next_page_token,
        ),
        metadata=ALICE,
    )
    listed = [i.input for i in (*first.interactions, *rest.interactions)]
    assert listed == ["t0", "t1", "t2", "t3", "t4", "late"]
    assert rest.next_page_token == ""


async def test_a_token_is_bound_to_its_order_and_position(memory: Memory) -> None:
    """A later page asks as the first did (AIP-158): a token of the oldest-first list given
    to the newest-first one, or with another after_interaction_id, is INVALID_ARGUMENT
    naming page_token, never a page of another list."""
    cid, ids = await conversation_with_turns(memory.stub, "t", 4, ALICE)

    async def token(oldest_first: bool, after: str) -> str:
        page = await memory.stub.ListInteractions(
            pb.ListInteractionsRequest(
                conversation_id=cid,
                page_size=1,
                oldest_first=oldest_first,
                after_interaction_id=after,
            ),
            metadata=ALICE,
        )
        assert page.next_page_token
        return page.next_page_token

    issued = {
        (False, ""): await token(False, ""),
        (True, ""): await token(True, ""),
        (True, ids[0]): await token(True, ids[0]),
        (False, ids[0]): await token(False, ids[0]),
    }
    for (oldest_first, after), page_token in issued.items():
        for asked in issued:
            request = pb.ListInteractionsRequest(
                conversation_id=cid,
                page_token=page_token,
                oldest_first=asked[0],
                after_interaction_id=asked[1],
            )
            if asked == (oldest_first, after):
                await memory.stub.ListInteractions(request, metadata=ALICE)
                continue
            err = await expect_error(
                memory.stub.ListInteractions(request, metadata=ALICE),
                grpc.StatusCode.INVALID_ARGUMENT,
                field="page_token",
            )
            assert error_info(err).reason == "INVALID_PAGE_TOKEN"
            assert "different list" in (err.details() or "")


async def test_a_malformed_position_is_invalid_argument_naming_it(memory: Memory) -> None:
    cid, _ = await conversation_with_turns(memory.stub, "t", 1, ALICE)
    for bad in ("not-an-id", "(", "+", "0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9"):
        err = await expect_error(
            memory.stub.ListInteractions(
                pb.ListInteractionsRequest(
                    conversation_id=cid, oldest_first=True, after_interaction_id=bad
                ),
                metadata=ALICE,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            field="after_interaction_id",
        )
        assert error_info(err).reason == "INVALID_ID"
        assert bad_request_field(err) == "after_interaction_id"
        assert "after_interaction_id" in (err.details() or "")


async def test_another_users_conversation_is_not_found_in_either_order(memory: Memory) -> None:
    """Bob asking for Alice's turns after one of hers, oldest first or newest first, gets
    the very answer a missing conversation gets, and not a turn of hers."""
    cid, ids = await conversation_with_turns(memory.stub, "t", 3, ALICE)
    missing = BEFORE_ALL
    for oldest_first in (True, False):
        answers = []
        for target in (cid, missing):
            err = await expect_error(
                memory.stub.ListInteractions(
                    pb.ListInteractionsRequest(
                        conversation_id=target,
                        oldest_first=oldest_first,
                        after_interaction_id=ids[0],
                    ),
                    metadata=BOB,
                ),
                grpc.StatusCode.NOT_FOUND,
                field="conversation_id",
            )
            answers.append(whole_answer(err, cid, missing))
        assert answers[0] == answers[1]
    # Alice's own turns after the same position are there.
    assert await _pages(memory, cid, 10, oldest_first=True, after=ids[0]) == [["t1", "t2"]]


async def test_pages_cut_by_the_byte_budget_go_on_in_either_order(
    memory_factory: MemoryFactory,
) -> None:
    """Pages stop at max_page_bytes (lua/list_interactions.lua: the cursor is then the last
    turn returned) and the next goes on right after it, oldest first and newest first, with
    and without a position: every turn once, in order. A guard: it held on main."""
    memory = await memory_factory(max_page_bytes=64 * 1024)
    cid, ids = await conversation_with_turns(memory.stub, "t", 2, ALICE)
    for n in range(12):  # ~18 KB each: three to a page at most
        request = pb.CreateInteractionRequest(
            conversation_id=cid, input=f"b{n} " + "q" * 9000, response="a" * 9000
        )
        made = await memory.stub.CreateInteraction(request, metadata=ALICE)
        ids.append(made.interaction.interaction_id)
    for oldest_first in (True, False):
        for after in ("", ids[0], ids[1]):
            listed: list[str] = []
            token, pages = "", 0
            while True:
                page = await memory.stub.ListInteractions(
                    pb.ListInteractionsRequest(
                        conversation_id=cid,
                        page_size=100,
                        page_token=token,
                        oldest_first=oldest_first,
                        after_interaction_id=after,
                    ),
                    metadata=ALICE,
                )
                listed += [i.interaction_id for i in page.interactions]
                pages += 1
                token = page.next_page_token
                if not token:
                    break
            expected = ids[ids.index(after) + 1 :] if after else ids
            assert listed == (expected if oldest_first else expected[::-1]), (oldest_first, after)
            assert pages >= 4  # the budget cut them
