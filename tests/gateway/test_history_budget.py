"""History by token budget and the rolling summary, through the gateway: the prompt the
fake LLM receives carries the summary, then the newest turns that fit, newest last; turns
that fall out are folded after the answer; the summary can be turned off; max_turns
eviction is folded; concurrent folds and turns lose nothing."""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from google.protobuf import duration_pb2, field_mask_pb2
from prometheus_client import REGISTRY

from services.common.auth import Identity, Role, forwarded_identity
from services.common.tokens import estimate_tokens
from services.gateway.backends import Backends
from services.gateway.clients import Caller
from services.gateway.conversation import REWRITE_SYSTEM_PROMPT
from services.gateway.generator import Options
from services.gateway.prompting import SUMMARY_PREFIX
from services.gateway.settings import GatewaySettings
from services.gateway.summarizer import SUMMARY_SYSTEM_PROMPT, FoldJob
from services.gateway.tokens import Estimate
from tests.gateway.conftest import ALICE, BOB, TOKEN, Stack, StackFactory, create_books
from tests.support.fake_openai import Behaviour
from tests.support.redis_cluster import LocalCluster
from tests.support.relay import Relay, serving
from tests.support.waiting import until

WINDOW = 1600
RESERVE = 100
FILLER = "lorem ipsum dolor sit amet " * 12  # ~320 characters, ~90 estimated tokens
_FOLD_HEAD = SUMMARY_SYSTEM_PROMPT.split("{")[0]
_LABEL = re.compile(r"\bq(\d+)\b")


def is_fold(body: dict[str, Any]) -> bool:
    return body["messages"][0]["content"].startswith(_FOLD_HEAD)


def reply(body: dict[str, Any]) -> str:
    """Folds answer with the labels (q<n>) of every turn they cover, old and new, so the
    test can tell exactly what a summary covers; answers are long, like real ones."""
    text = body["messages"][-1]["content"]
    if is_fold(body):
        labels = sorted({int(n) for n in _LABEL.findall(text)})
        return "covers " + " ".join(f"q{n}" for n in labels)
    if body["messages"][0]["content"] == REWRITE_SYSTEM_PROMPT:
        return "standalone query"
    question = text.rsplit("Question: ", 1)[1].split()[0]
    return f"answer to {question} " + FILLER


async def _stack(stack_factory: StackFactory, **settings: Any) -> Stack:
    stack = await stack_factory(
        context_windows={"fake-model": WINDOW}, answer_reserve_tokens=RESERVE, **settings
    )
    await create_books(stack)
    stack.fake.reply = reply
    return stack


async def _conversation(stack: Stack, **fields: Any) -> str:
    made = await stack.memory.CreateConversation(
        mem_pb.CreateConversationRequest(**fields), metadata=ALICE
    )
    return made.conversation.conversation_id


async def _ask(stack: Stack, cid: str, n: int, **fields: Any) -> gw_pb.AskResponse:
    return await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question=f"q{n} {FILLER}",
            conversation_id=cid,
            context_size=2,
            rewrite_query=False,
            debug=True,
            **fields,
        ),
        metadata=ALICE,
    )


async def _get(stack: Stack, cid: str) -> mem_pb.Conversation:
    got = await stack.memory.GetConversation(
        mem_pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    return got.conversation


async def _summary_reaches(stack: Stack, cid: str, through: str, limit: float = 30.0) -> None:
    """Waits (polling, bounded) until the background fold covers ``through``."""

    async def covered() -> bool:
        return (await _get(stack, cid)).summary.through_interaction_id >= through

    await until(covered, "the summary caught up", timeout=limit)


def _labels(text: str) -> list[int]:
    return [int(n) for n in _LABEL.findall(text)]


def _turn_labels(prompt: list[Any]) -> list[int]:
    """The q<n> of each past turn's question in a prompt (user messages before the last)."""
    return [
        _labels(m.content)[0]
        for m in prompt[:-1]
        if m.role == gen_pb.ROLE_USER and _labels(m.content)
    ]


@pytest.mark.slow
async def test_sixty_turns_fit_the_budget_with_a_summary(stack_factory: StackFactory) -> None:
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids: list[str] = []
    last: gw_pb.AskResponse | None = None
    for n in range(60):
        last = await _ask(stack, cid, n)
        ids.append(last.interaction_id)
        assert last.history_tokens <= last.history_budget_tokens
        sent = _turn_labels(list(last.prompt))
        if sent and sent[0] > 0:
            # Everything older than the oldest turn sent gets folded, in the background.
            await _summary_reaches(stack, cid, ids[sent[0] - 1])
    assert last is not None
    prompt = list(last.prompt)
    # The fake received exactly this prompt for the last answer.
    received = [r.json for r in stack.fake.chat_requests if not is_fold(r.json)][-1]
    assert [m["content"] for m in received["messages"]] == [m.content for m in prompt]

    # System prompt, the summary, then the newest turns in order, newest last.
    assert prompt[1].content.startswith(SUMMARY_PREFIX)
    sent = _turn_labels(prompt)
    assert sent == list(range(sent[0], 59)) and len(sent) >= 2
    assert prompt[-1].content.endswith(f"Question: q59 {FILLER}".strip())
    # The summary covers every turn older than those sent: nothing is lost in between.
    assert set(_labels(prompt[1].content)) == set(range(sent[0]))
    assert last.summary_used  # folded ahead: nothing had to be trimmed
    # Within the budget (as counted; the fake provider's tokenizer is the estimate).
    total = sum(estimate_tokens(m.content) + 4 for m in prompt)
    assert total <= WINDOW - RESERVE

    conversation = await _get(stack, cid)
    assert conversation.summary.summarised_turns >= sent[0]  # and maybe ahead again
    assert conversation.summary.folds >= 1
    assert conversation.summary.prompt_tokens > 0 and conversation.summary.completion_tokens > 0
    assert conversation.interaction_count == 60


async def _fill(stack: Stack, cid: str, turns: int) -> list[str]:
    ids = []
    for n in range(turns):
        made = await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=cid, input=f"q{n} {FILLER}", response=f"answer {FILLER}"
            ),
            metadata=ALICE,
        )
        ids.append(made.interaction.interaction_id)
    return ids


async def test_summary_off_per_request_and_per_conversation(stack_factory: StackFactory) -> None:
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    await _fill(stack, cid, 12)
    answer = await _ask(stack, cid, 12, summary_disabled=True)
    assert not answer.summary_used and answer.trimmed.history_turns > 0
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in answer.prompt)
    # The newest turns that fit, no summary, and no fold asked for afterwards.
    assert _turn_labels(list(answer.prompt))[-1] == 11
    await asyncio.sleep(0.2)  # a fold, if one had been queued, would have started
    assert not any(is_fold(r.json) for r in stack.fake.chat_requests)
    assert not (await _get(stack, cid)).HasField("summary")

    off = await _conversation(stack, summary_disabled=True)
    await _fill(stack, off, 12)
    answer = await _ask(stack, off, 12)
    assert not answer.summary_used
    await asyncio.sleep(0.2)
    assert not any(is_fold(r.json) for r in stack.fake.chat_requests)

    # With the summary on, the same conversation gets one.
    answer = await _ask(stack, cid, 13)
    await _summary_reaches(stack, cid, "0")
    answer = await _ask(stack, cid, 14)
    assert answer.summary_used
    assert answer.prompt[1].content.startswith(SUMMARY_PREFIX)

    # Off for one request while the conversation has a summary: the prompt goes without it.
    assert (await _get(stack, cid)).summary.text
    answer = await _ask(stack, cid, 15, summary_disabled=True)
    assert not answer.summary_used
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in answer.prompt)
    assert _turn_labels(list(answer.prompt))[-1] == 14

    # Turned off on the conversation (by update) while it has a summary: not used either.
    await stack.memory.UpdateConversation(
        mem_pb.UpdateConversationRequest(
            conversation_id=cid,
            summary_disabled=True,
            update_mask=field_mask_pb2.FieldMask(paths=["summary_disabled"]),
        ),
        metadata=ALICE,
    )
    answer = await _ask(stack, cid, 16)
    assert not answer.summary_used
    assert not any(m.content.startswith(SUMMARY_PREFIX) for m in answer.prompt)
    assert _turn_labels(list(answer.prompt))[-1] == 15


async def test_the_budget_is_the_window_minus_the_reserve_and_the_retrieved_context(
    stack_factory: StackFactory,
) -> None:
    """The history's budget is what the window leaves after the answer reserve, the
    system prompt and the question with its retrieved context: the same question with
    hits has less room for history than without, and everything sent fits the window."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    await _fill(stack, cid, 3)
    answers = []
    for n, hits in ((3, 0), (4, 3)):
        request = gw_pb.AskRequest(
            collection="Books",
            llm_question=f"q{n} dune desert planet spice",
            conversation_id=cid,
            context_size=hits,
            rewrite_query=False,
            summary_disabled=True,
            debug=True,
        )
        answers.append(await stack.stub.Ask(request, metadata=ALICE))
    bare, with_hits = answers
    assert not bare.hits and with_hits.hits
    question_bare = estimate_tokens(bare.prompt[-1].content)
    question_with_hits = estimate_tokens(with_hits.prompt[-1].content)
    assert question_with_hits > question_bare
    # What the hits added to the question came off the history's budget.
    assert bare.history_budget_tokens - with_hits.history_budget_tokens >= (
        question_with_hits - question_bare - 4
    )
    for answer in answers:
        system = estimate_tokens(answer.prompt[0].content) + 4
        question = estimate_tokens(answer.prompt[-1].content) + 4
        assert answer.history_budget_tokens <= WINDOW - RESERVE - system - question + 4
        assert answer.history_tokens <= answer.history_budget_tokens


async def test_twenty_large_turns_fit_instead_of_failing(stack_factory: StackFactory) -> None:
    stack = await _stack(stack_factory, summary_enabled=False)
    cid = await _conversation(stack)
    big = "word " * 1600  # 8000 characters: one turn is larger than the whole window
    for n in range(20):
        await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=cid, input=f"q{n} {big}", response=f"a{n} {big}"
            ),
            metadata=ALICE,
        )
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="q20 and now?",
            conversation_id=cid,
            interaction_size=20,
            debug=True,
        ),
        metadata=ALICE,
    )
    assert answer.answer and answer.interaction_id
    assert answer.trimmed.history_turns == 20
    for request in stack.fake.chat_requests:  # the rewrite too: no turn fitted, none sent
        total = sum(estimate_tokens(m["content"]) + 4 for m in request.json["messages"])
        assert total <= WINDOW, request.json["messages"][0]["content"][:60]


async def test_max_turns_eviction_is_folded_into_the_summary(
    stack_factory: StackFactory,
) -> None:
    stack = await _stack(stack_factory)
    cid = await _conversation(stack, max_turns=3)
    ids = []
    for n in range(7):
        ids.append((await _ask(stack, cid, n)).interaction_id)
        await stack.fake.wait_for_requests(0)
        if n >= 3:
            await _summary_reaches(stack, cid, ids[n - 3])
    conversation = await _get(stack, cid)
    assert conversation.interaction_count == 3
    listed = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert [i.interaction_id for i in listed.interactions] == ids[:3:-1]
    # Nothing evicted was lost: the summary covers every evicted turn.
    assert set(_labels(conversation.summary.text)) >= {0, 1, 2, 3}
    assert conversation.summary.evicted_unsummarised_turns == 0


async def test_two_turns_at_once_lose_nothing(stack_factory: StackFactory) -> None:
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    answers = await asyncio.gather(*(_ask(stack, cid, n) for n in range(2)))
    listed = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert {i.interaction_id for i in listed.interactions} == {a.interaction_id for a in answers}
    assert (await _get(stack, cid)).interaction_count == 2


async def test_concurrent_folds_do_not_clobber_each_other(stack_factory: StackFactory) -> None:
    """Two replicas folding the same turns at once: memory's compare-and-set lets one
    write; the other's fold is dropped."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 6)
    settings = GatewaySettings(
        memory_addr=f"127.0.0.1:{stack.servers['memory'].port}",
        generation_addr=f"127.0.0.1:{stack.servers['generation'].port}",
        internal_token=TOKEN,
        metrics_port=None,
    )
    replicas = [Backends.build(settings) for _ in range(2)]
    alice = Identity("alice", "alice", Role.ADMIN)
    caller = Caller(who=alice, identity=forwarded_identity(alice, TOKEN))
    # Keep the two newest turns: fold the four before them.
    job = FoldJob(caller, cid, 2, 10**6, Options("fake", "fake-model"), WINDOW, Estimate())
    stack.fake.latency = 0.3  # both read the summary before either writes
    try:
        await asyncio.gather(*(b.summarizer.fold(job) for b in replicas))
    finally:
        for b in replicas:
            await b.clients.close()
    folds = [r for r in stack.fake.chat_requests if is_fold(r.json)]
    assert len(folds) == 2
    conversation = await _get(stack, cid)
    assert conversation.summary.folds == 1
    assert conversation.summary.through_interaction_id == ids[3]
    assert set(_labels(conversation.summary.text)) == {0, 1, 2, 3}


async def test_expired_conversation_through_the_gateway(stack_factory: StackFactory) -> None:
    stack = await _stack(stack_factory)
    cid = await _conversation(stack, ttl=duration_pb2.Duration(seconds=1))
    answer = await _ask(stack, cid, 0)
    assert answer.interaction_id
    assert (await _get(stack, cid)).HasField("expire_time")
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while True:
        try:
            await _get(stack, cid)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            break
        assert loop.time() < end, "never expired"
        await asyncio.sleep(0.1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _ask(stack, cid, 1)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_queued_fold_is_finished_at_shutdown(stack_factory: StackFactory) -> None:
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 12)
    stack.fake.enqueue(Behaviour.ok(), Behaviour.ok(latency=0.5))  # the answer, a slow fold
    await _ask(stack, cid, 12)
    # Stopping drains the summary queue before the channels close.
    conversation, _, _ = await _drained(stack, cid, grace=0)
    assert conversation.summary.folds >= 1
    assert conversation.summary.through_interaction_id >= ids[0]


async def test_the_answer_never_waits_for_its_fold(stack_factory: StackFactory) -> None:
    """The fold runs after the turn is stored, in the background: a fold that hangs (the
    fake holds it an hour, the summary's own timeout is longer still) costs the answer
    nothing; the turn is stored and answered while the fold is held."""
    stack = await _stack(stack_factory, summary_timeout=3600.0, summary_drain_timeout=0.1)
    cid = await _conversation(stack)
    await _fill(stack, cid, 12)
    stack.fake.enqueue(Behaviour.ok(), Behaviour.hang())  # the answer, then the fold
    request = gw_pb.AskRequest(
        collection="Books",
        llm_question=f"q12 {FILLER}",
        conversation_id=cid,
        context_size=2,
        rewrite_query=False,
    )
    # A bound on the wait, not a timing assertion: an answer held for the fold never comes.
    answer = await stack.stub.Ask(request, metadata=ALICE, timeout=60)
    assert answer.answer and answer.interaction_id and not answer.summary_used
    await _fold_calls(stack, 1)
    folds = [r for r in stack.fake.chat_requests if is_fold(r.json)]
    assert len(folds) == 1 and folds[0].finished_at is None  # still held
    conversation = await _get(stack, cid)
    assert conversation.interaction_count == 13 and not conversation.HasField("summary")


async def test_summary_and_retention_of_another_user_are_not_found(
    stack_factory: StackFactory,
) -> None:
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 2)
    for call in (
        stack.memory.UpdateConversationSummary(
            mem_pb.UpdateConversationSummaryRequest(
                conversation_id=cid, text="x", through_interaction_id=ids[0]
            ),
            metadata=BOB,
        ),
        stack.memory.UpdateConversation(
            mem_pb.UpdateConversationRequest(
                conversation_id=cid,
                max_turns=1,
                update_mask=field_mask_pb2.FieldMask(paths=["max_turns"]),
            ),
            metadata=BOB,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    got = await _get(stack, cid)
    assert got.max_turns == 0 and not got.HasField("summary") and got.interaction_count == 2


@pytest.mark.slow
async def test_budget_summary_eviction_and_expiry_on_a_cluster(
    stack_factory: StackFactory, cluster: LocalCluster
) -> None:
    """The same guarantees with memory on Redis Cluster: folds, eviction folded into the
    summary, concurrent turns, expiry."""
    stack = await _stack(stack_factory, memory={"redis_url": cluster.url, "redis_cluster": True})
    cid = await _conversation(stack, max_turns=3)
    ids = []
    for n in range(6):
        ids.append((await _ask(stack, cid, n)).interaction_id)
        if n >= 3:
            await _summary_reaches(stack, cid, ids[n - 3])
    both = await asyncio.gather(*(_ask(stack, cid, n) for n in (6, 7)))
    conversation = await _get(stack, cid)
    assert set(_labels(conversation.summary.text)) >= {0, 1, 2}
    listed = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    kept = [i.interaction_id for i in listed.interactions]
    assert {a.interaction_id for a in both} <= set(kept)  # neither concurrent turn lost
    assert conversation.summary.evicted_unsummarised_turns == 0

    short = await _conversation(stack, ttl=duration_pb2.Duration(seconds=1))
    await _ask(stack, short, 0)
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while True:
        try:
            await _get(stack, short)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.NOT_FOUND
            break
        assert loop.time() < end, "never expired"
        await asyncio.sleep(0.1)
    listed_conversations = await stack.memory.ListConversations(
        mem_pb.ListConversationsRequest(), metadata=ALICE
    )
    assert [c.conversation_id for c in listed_conversations.conversations] == [cid]


def _replica(stack: Stack, **overrides: Any) -> Backends:
    """The backends of a gateway replica of its own, on the stack's memory and generation,
    with ``overrides`` of its settings (closed by the caller: ``clients.close()``)."""
    settings = GatewaySettings(
        **{
            "memory_addr": f"127.0.0.1:{stack.servers['memory'].port}",
            "generation_addr": f"127.0.0.1:{stack.servers['generation'].port}",
            "internal_token": TOKEN,
            "metrics_port": None,
            **overrides,
        }
    )
    return Backends.build(settings)


def _alice_fold(cid: str, keep_turns: int) -> FoldJob:
    """The job a turn of Alice's on ``cid`` would queue, keeping its ``keep_turns`` newest."""
    alice = Identity("alice", "alice", Role.ADMIN)
    caller = Caller(who=alice, identity=forwarded_identity(alice, TOKEN))
    return FoldJob(
        caller, cid, keep_turns, 10**6, Options("fake", "fake-model"), WINDOW, Estimate()
    )


async def _fold_directly(
    stack: Stack, cid: str, keep_turns: int, queued: bool = False, **overrides: Any
) -> None:
    """One fold of ``cid`` keeping its ``keep_turns`` newest turns, by a gateway replica of
    its own (the job a turn would queue, run in the foreground), with ``overrides`` of its
    settings. ``queued``: submitted to the replica's summary queue, which it drains (the
    fold counted and logged as a worker runs it, its errors too)."""
    backends = _replica(stack, **overrides)
    job = _alice_fold(cid, keep_turns)
    try:
        if queued:
            assert backends.summarizer.submit(job)
            await backends.summarizer.drain()
        else:
            await backends.summarizer.fold(job)
    finally:
        await backends.clients.close()


async def test_a_fold_for_a_full_owner_makes_no_llm_call(stack_factory: StackFactory) -> None:
    """An owner whose memory has no room for the summary the fold would write: the fold
    asks memory first (CheckStorage, as UpdateConversationSummary would count it) and
    stops there; the model receives no request (it used to be called, and its summary
    then refused OWNER_STORAGE_FULL). With room again, the same fold is made."""
    stack = await _stack(stack_factory, memory={"max_bytes_per_owner": 12_000})
    cid = await _conversation(stack)
    await _fill(stack, cid, 6)
    other = await _conversation(stack)
    size = 2048
    while size:  # the rest of the owner's bytes, until not even a 1-byte turn fits
        try:
            await stack.memory.CreateInteraction(
                mem_pb.CreateInteractionRequest(conversation_id=other, input="x" * size),
                metadata=ALICE,
            )
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            size //= 2
    await _fold_directly(stack, cid, 2)
    assert [r for r in stack.fake.chat_requests if is_fold(r.json)] == []
    assert not (await _get(stack, cid)).HasField("summary")

    await stack.memory.DeleteConversation(
        mem_pb.DeleteConversationRequest(conversation_id=other), metadata=ALICE
    )
    await _fold_directly(stack, cid, 2)
    assert len([r for r in stack.fake.chat_requests if is_fold(r.json)]) == 1
    assert (await _get(stack, cid)).summary.summarised_turns == 4


async def test_a_fold_longer_than_memory_keeps_is_cut_to_fit(
    stack_factory: StackFactory,
) -> None:
    """A summary longer than GENSEARCH_MEMORY_MAX_SUMMARY_BYTES (which memory refused,
    after the LLM call) is cut to it."""
    stack = await _stack(stack_factory, memory={"max_summary_bytes": 12})
    cid = await _conversation(stack)
    await _fill(stack, cid, 6)
    await _fold_directly(stack, cid, 2)
    summary = (await _get(stack, cid)).summary
    assert summary.text == "covers q0 q1"[:12]
    assert summary.summarised_turns == 4


async def test_a_window_of_a_million_tokens_keeps_the_prompt_within_generations_chars(
    stack_factory: StackFactory,
) -> None:
    """A model whose window holds more characters than generation's MAX_PROMPT_CHARS
    (gpt-4.1's 1,047,576 tokens, in the defaults, against a million characters): the Ask's
    prompt stops at MAX_RENDERED_PROMPT_CHARS, history first, then the lowest-ranked hits,
    as the token budget does. The whole window's hits went to generation, which refused
    the Ask INVALID_ARGUMENT naming `messages`, a field the caller never sent. Here both
    limits are 20,000 characters and five hits hold 40,000."""
    stack = await stack_factory(
        context_windows={"fake-model": 1_000_000},
        max_rendered_prompt_chars=20_000,
        generation_settings={"max_prompt_chars": 20_000},
    )
    books = [
        {"title": f"Book {i}", "body": "desert planet spice " * 400, "year": 1965 + i}
        for i in range(5)
    ]
    await create_books(stack, books=books)
    stack.fake.reply = "Arrakis [1]."
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="desert planet?", context_size=5, new_conversation=True
        ),
        metadata=ALICE,
    )
    assert first.trimmed.hits >= 3 and len(first.hits) == 5
    sent = stack.fake.chat_requests[-1].json["messages"]
    assert sum(len(m["content"]) for m in sent) <= 20_000
    # With history: the question and its hits fill the prompt; the turn before is dropped.
    second = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="and the spice?",
            context_size=5,
            conversation_id=first.conversation_id,
            rewrite_query=False,
        ),
        metadata=ALICE,
    )
    assert second.answer
    sent = stack.fake.chat_requests[-1].json["messages"]
    assert sum(len(m["content"]) for m in sent) <= 20_000


async def test_a_turn_deleted_while_its_fold_runs_never_reaches_the_summary(
    stack_factory: StackFactory,
) -> None:
    """DeleteInteraction of a turn a fold under way is summarising (the fold's model call
    held): once the deletion is acknowledged, the summary never holds the turn's words.
    Before, the fold's compare-and-set checked only the turns the summary covered, which a
    deletion does not change: the held fold wrote the deleted turn into the summary."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 6)
    stack.fake.gate = asyncio.Event()
    fold = asyncio.create_task(_fold_directly(stack, cid, 2))  # folds q0..q3
    try:
        await asyncio.wait_for(stack.fake.gate_reached.wait(), 30)  # a bound, not a timing
        held = [r for r in stack.fake.chat_requests if is_fold(r.json)]
        assert len(held) == 1 and 1 in _labels(held[0].json["messages"][-1]["content"])
        await stack.memory.DeleteInteraction(
            mem_pb.DeleteInteractionRequest(interaction_id=ids[1]), metadata=ALICE
        )
    finally:
        stack.fake.gate.set()
        await fold
    assert 1 not in _labels((await _get(stack, cid)).summary.text)
    # The next fold, made after the deletion, folds the turns still there.
    await _fold_directly(stack, cid, 2)
    summary = (await _get(stack, cid)).summary
    assert summary.through_interaction_id == ids[3]
    assert set(_labels(summary.text)) == {0, 2, 3}


async def _fold_calls(stack: Stack, count: int) -> None:
    """Waits (polling, bounded) until the fake got ``count`` fold calls."""

    async def made() -> bool:
        return len([r for r in stack.fake.chat_requests if is_fold(r.json)]) >= count

    await until(made, f"{count} fold calls", timeout=30)


async def _drained(
    stack: Stack, cid: str, grace: float = 30
) -> tuple[mem_pb.Conversation, list[str], list[str]]:
    """Stops the gateway (``grace`` for its calls, then its queued folds drained), then
    reads the conversation straight from memory: the conversation, its turns' ids oldest
    first and their q<n> labels."""
    await stack.gateway.stop(grace)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.servers['memory'].port}")
    try:
        memory = mem_grpc.MemoryServiceStub(channel)
        alice = forwarded_identity(Identity("alice", "alice", Role.ADMIN), TOKEN)
        got = await memory.GetConversation(
            mem_pb.GetConversationRequest(conversation_id=cid), metadata=alice
        )
        listed = await memory.ListInteractions(
            mem_pb.ListInteractionsRequest(conversation_id=cid, page_size=100), metadata=alice
        )
    finally:
        await channel.close()
    turns = list(reversed(listed.interactions))
    return got.conversation, [i.interaction_id for i in turns], [i.input for i in turns]


async def test_a_turn_stored_while_its_conversations_fold_runs_is_folded_after_it(
    stack_factory: StackFactory,
) -> None:
    """An Ask on a conversation whose fold (queued by the Ask before) holds its model call:
    the new turn's fold waits for that one to end, then folds what is still pending (one
    job per conversation at a time, as docs/gateway.md says). Before, the job was taken by
    the second worker at once: both folds read the same summary, both made their model
    call, and the later write lost the compare-and-set (``conflict``), its call wasted."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 12)
    first, second = asyncio.Event(), asyncio.Event()
    conflicts = _folds("conflict")
    stack.fake.enqueue(Behaviour.ok(), Behaviour.held(first))  # q12's answer, its fold
    try:
        answers = [await _ask(stack, cid, 12)]
        await _fold_calls(stack, 1)  # the first fold holds its model call
        stack.fake.enqueue(Behaviour.ok(), Behaviour.held(second))  # q13's answer, a fold
        answers.append(await _ask(stack, cid, 13))
        first.set()
        await _summary_reaches(stack, cid, ids[0])  # the first fold's summary stored
    finally:
        first.set()
        second.set()
    conversation, order, _ = await _drained(stack, cid)
    assert _folds("conflict") - conflicts == 0
    # Every fold call made was stored (none spent on a fold that lost the race).
    calls = [r for r in stack.fake.chat_requests if is_fold(r.json)]
    assert len(calls) == conversation.summary.folds >= 2
    assert order == ids + [a.interaction_id for a in answers]
    through = order.index(conversation.summary.through_interaction_id)
    assert set(_labels(conversation.summary.text)) == set(range(through + 1))
    assert conversation.summary.summarised_turns == through + 1


async def test_a_fold_held_back_when_the_gateway_begins_to_stop_is_run_by_the_drain(
    stack_factory: StackFactory,
) -> None:
    """A fold held back while its conversation's fold runs, and the gateway begins to stop
    before that fold ends: the drain runs it, as it runs the queued ones (docs/gateway.md:
    stopping drains the queue). Before, the running fold's end queued it through
    ``submit``, which a stopping queue refuses: counted dropped, never run."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 12)
    replica = _replica(stack, summary_drain_timeout=120.0)  # bounded generously, not timed
    first = asyncio.Event()
    stack.fake.enqueue(Behaviour.held(first))  # the first fold's model call
    dropped, conflicts = _folds("dropped"), _folds("conflict")
    try:
        assert replica.summarizer.submit(_alice_fold(cid, 2))  # folds q0..q9
        await _fold_calls(stack, 1)  # and holds its model call
        assert replica.summarizer.submit(_alice_fold(cid, 1))  # q10 too: held back
        # Released once the drain below has begun (it closes the queue before it waits).
        asyncio.get_running_loop().call_soon(first.set)
        await replica.summarizer.drain()
    finally:
        first.set()
        await replica.clients.close()
    assert (_folds("dropped") - dropped, _folds("conflict") - conflicts) == (0, 0)
    summary = (await _get(stack, cid)).summary
    # q10 folded after q0..q9, every model call made stored (a batch a call).
    assert summary.folds == len([r for r in stack.fake.chat_requests if is_fold(r.json)])
    assert summary.through_interaction_id == ids[10]
    assert set(_labels(summary.text)) == set(range(11))


async def test_a_fold_held_back_when_the_drain_gives_up_is_counted_dropped(
    stack_factory: StackFactory,
) -> None:
    """A fold held back while its conversation's fold runs, and the drain's timeout ends
    before that fold does: the drain cancels the running fold, and the held-back one is
    counted dropped, not queued. Before, the cancelled fold's end queued it onto a queue
    no worker runs any more: counted neither dropped nor folded, SUMMARY_QUEUE left at 1."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    await _fill(stack, cid, 12)
    replica = _replica(stack, summary_drain_timeout=0.2)  # the held fold outlasts it
    first = asyncio.Event()
    stack.fake.enqueue(Behaviour.held(first))  # the first fold's model call, never let go
    dropped, folded = _folds("dropped"), _folds("folded")
    try:
        assert replica.summarizer.submit(_alice_fold(cid, 2))  # folds q0..q9
        await _fold_calls(stack, 1)  # and holds its model call
        assert replica.summarizer.submit(_alice_fold(cid, 1))  # q10 too: held back
        await replica.summarizer.drain()  # gives up on the held fold, cancels it
    finally:
        first.set()
        await replica.clients.close()
    assert (_folds("dropped") - dropped, _folds("folded") - folded) == (1, 0)
    assert REGISTRY.get_sample_value("gensearch_gateway_summary_queue") == 0
    # Nothing was folded: the summary is where it was.
    assert (await _get(stack, cid)).summary.folds == 0


async def test_five_asks_at_once_on_one_conversation_store_each_turn_once_and_fold_each_once(
    stack_factory: StackFactory,
) -> None:
    """Five Asks at once on one conversation (a backlog to fold): five turns stored, each
    once, newest first by id; once the folds are drained, the summary holds exactly the
    turns it claims (each folded once, none skipped), however the folds interleaved."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 12)
    conflicts = _folds("conflict")
    answers = await asyncio.gather(*(_ask(stack, cid, 12 + n) for n in range(5)))
    conversation, order, inputs = await _drained(stack, cid)
    assert _folds("conflict") - conflicts == 0  # one fold of the conversation at a time
    made = [a.interaction_id for a in answers]
    assert len(set(made)) == 5
    assert order[:12] == ids and sorted(order[12:]) == sorted(made) and order == sorted(order)
    assert conversation.interaction_count == 17
    summary = conversation.summary
    through = order.index(summary.through_interaction_id)
    assert _labels(summary.text) == sorted(_labels(q)[0] for q in inputs[: through + 1])
    assert summary.summarised_turns == through + 1


async def test_a_fold_with_more_pending_turns_than_it_reads_folds_the_oldest_first(
    stack_factory: StackFactory,
) -> None:
    """More turns wait to be folded than SUMMARY_MAX_READ_TURNS (here 4; 10 pending, 2
    kept): each fold folds the oldest 4 still pending, so every turn the summary claims to
    cover (up to summary.through_interaction_id) is in it, and the next folds catch up.
    Before, the fold read the newest turns only, folded q8 and q9, and set the summary's
    through to q9: q0..q7 were counted as summarised without ever reaching the model."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 12)
    for through in (3, 7, 9):
        await _fold_directly(stack, cid, 2, summary_max_read_turns=4)
        summary = (await _get(stack, cid)).summary
        assert summary.through_interaction_id == ids[through]
        assert set(_labels(summary.text)) == set(range(through + 1))
        assert summary.summarised_turns == through + 1
    folds = [r.json for r in stack.fake.chat_requests if is_fold(r.json)]
    assert len(folds) == 3  # at most 4 turns a fold: one model call each here
    # The last fold found nothing older than the turns the prompt keeps: q10, q11 stay out.
    await _fold_directly(stack, cid, 2, summary_max_read_turns=4)
    assert len([r for r in stack.fake.chat_requests if is_fold(r.json)]) == 3
    assert (await _get(stack, cid)).summary.through_interaction_id == ids[9]


_LIST = "/gensearch.memory.v1.MemoryService/ListInteractions"


class _CountingMemory(Relay):
    """Memory as it is, every method relayed, counting the turns ListInteractions answers
    (what a fold reads of the conversation). ``older``: a memory from before
    ListInteractions' oldest_first and after_interaction_id (both taken out of the
    request, so it lists newest first from the newest turn)."""

    def __init__(self, older: bool = False) -> None:
        super().__init__()
        self.older = older
        self.turns_read = 0

    def request(self, method: str, request: bytes) -> bytes:
        if method != _LIST or not self.older:
            return request
        asked = mem_pb.ListInteractionsRequest.FromString(request)
        asked.ClearField("oldest_first")
        asked.ClearField("after_interaction_id")
        return asked.SerializeToString()

    async def answer(self, method: str, answer: bytes) -> bytes:
        if method == _LIST:
            self.turns_read += len(mem_pb.ListInteractionsResponse.FromString(answer).interactions)
        return answer


async def test_a_fold_far_behind_reads_only_the_turns_it_folds(
    stack_factory: StackFactory,
) -> None:
    """A backlog of 250 pending turns, SUMMARY_MAX_READ_TURNS 4, 2 turns kept: each fold
    reads the 7 newest turns (the 2 kept, the newest pending one, and 4 more, which would
    have been every pending turn of a short backlog), then the 4 right after the summary's
    end (ListInteractions oldest first, after it): 11 however long the backlog, and folds
    those 4. Before, every fold read the conversation newest first down to the summary's
    end: all 250 turns, 3 pages, on every turn until it caught up."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 250)
    counting = _CountingMemory()
    counting.target = f"127.0.0.1:{stack.servers['memory'].port}"
    async with serving(counting) as address:
        for through in (3, 7):
            counting.turns_read = 0
            await _fold_directly(stack, cid, 2, summary_max_read_turns=4, memory_addr=address)
            assert counting.turns_read == (2 + 1 + 4) + 4
            summary = (await _get(stack, cid)).summary
            assert summary.through_interaction_id == ids[through]
            assert set(_labels(summary.text)) == set(range(through + 1))
    # The same reading through the gateway's MemoryService, for a client.
    after = await stack.memory.ListInteractions(
        mem_pb.ListInteractionsRequest(
            conversation_id=cid, page_size=2, oldest_first=True, after_interaction_id=ids[7]
        ),
        metadata=ALICE,
    )
    assert after.oldest_first
    assert [i.interaction_id for i in after.interactions] == ids[8:10]


async def test_a_fold_on_a_memory_that_lists_newest_first_only_still_folds_the_oldest(
    stack_factory: StackFactory,
) -> None:
    """Mid-upgrade, a memory older than oldest_first lists newest first whatever the fold
    asks (and says nothing of the order): the fold sees it and walks down to the summary's
    end as before, so it still folds the oldest pending turns, never the newest. A guard:
    the old fold only ever walked down. Each such read is counted (order_ignored), so an
    operator sees when an upgrade has left none: the first two folds; the third's first
    read reached the summary's end and held the pending turns itself."""
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    ids = await _fill(stack, cid, 12)
    ignored = _read_fallbacks("order_ignored")
    older = _CountingMemory(older=True)
    older.target = f"127.0.0.1:{stack.servers['memory'].port}"
    async with serving(older) as address:
        for through in (3, 7, 9):
            await _fold_directly(stack, cid, 2, summary_max_read_turns=4, memory_addr=address)
            summary = (await _get(stack, cid)).summary
            assert summary.through_interaction_id == ids[through]
            assert set(_labels(summary.text)) == set(range(through + 1))
    assert _read_fallbacks("order_ignored") - ignored == 2


def _folds(outcome: str) -> float:
    labels = {"outcome": outcome}
    return REGISTRY.get_sample_value("gensearch_gateway_summary_folds_total", labels) or 0.0


@pytest.mark.parametrize("reason", ["CONVERSATION_NOT_FOUND", "SUMMARY_DISABLED"])
async def test_a_conversation_deleted_while_its_fold_runs_is_skipped_quietly(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture, reason: str
) -> None:
    """DeleteConversation (or its summary turned off) while the gateway's own background
    fold (queued by an Ask) holds its model call: the fold's UpdateConversationSummary
    answers NOT_FOUND (FAILED_PRECONDITION SUMMARY_DISABLED). That is a normal race, not a
    failure: counted ``skipped``, one INFO line naming the reason, no traceback. Before,
    each was counted ``failed`` with a WARNING, as if memory were away."""
    caplog.set_level(logging.INFO, "gensearch.gateway.summary")
    stack = await _stack(stack_factory)
    cid = await _conversation(stack)
    await _fill(stack, cid, 12)
    answer_gate = stack.fake.gate = asyncio.Event()
    asked = asyncio.create_task(_ask(stack, cid, 12))
    try:
        await asyncio.wait_for(stack.fake.gate_reached.wait(), 30)  # the Ask's own answer
        # A new gate for the calls from now on (the fold's); the answer waits on the old.
        stack.fake.gate_reached.clear()
        stack.fake.gate = asyncio.Event()
        answer_gate.set()
        await asyncio.wait_for(asked, 30)
        await asyncio.wait_for(stack.fake.gate_reached.wait(), 30)  # the fold's call, held
        assert is_fold(stack.fake.chat_requests[-1].json)
        skipped, failed = _folds("skipped"), _folds("failed")
        if reason == "CONVERSATION_NOT_FOUND":
            await stack.memory.DeleteConversation(
                mem_pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
            )
        else:
            await stack.memory.UpdateConversation(
                mem_pb.UpdateConversationRequest(conversation_id=cid, summary_disabled=True),
                metadata=ALICE,
            )
    finally:
        answer_gate.set()
        if stack.fake.gate is not None:
            stack.fake.gate.set()
        await asyncio.gather(asked, return_exceptions=True)
    await stack.gateway.stop(30)  # drains the summary queue: the held fold ends
    assert (_folds("skipped") - skipped, _folds("failed") - failed) == (1, 0)
    lines = [r for r in caplog.records if r.name == "gensearch.gateway.summary"]
    assert lines and not [r for r in lines if r.exc_info or r.levelno >= logging.WARNING]
    assert any(getattr(r, "reason", "") == reason for r in lines), lines


def _read_fallbacks(reason: str) -> float:
    labels = {"reason": reason}
    return (
        REGISTRY.get_sample_value("gensearch_gateway_summary_read_fallbacks_total", labels) or 0.0
    )


async def test_a_fold_that_finds_the_summary_turned_off_is_counted_skipped(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A fold queued while the conversation's summary was on, which finds it off at its
    first read (turned off in between): counted ``skipped`` with one INFO line naming
    SUMMARY_DISABLED, as when memory says so later in the fold; no model call. Before, it
    returned without counting anything (neither outcome moved)."""
    caplog.set_level(logging.INFO, "gensearch.gateway.summary")
    stack = await _stack(stack_factory)
    cid = await _conversation(stack, summary_disabled=True)
    await _fill(stack, cid, 6)
    skipped, failed = _folds("skipped"), _folds("failed")
    await _fold_directly(stack, cid, 2, queued=True)
    assert (_folds("skipped") - skipped, _folds("failed") - failed) == (1, 0)
    assert [r for r in stack.fake.chat_requests if is_fold(r.json)] == []
    lines = [r for r in caplog.records if r.name == "gensearch.gateway.summary"]
    assert [(r.levelno, getattr(r, "reason", "")) for r in lines] == [
        (logging.INFO, "SUMMARY_DISABLED")
    ]


class _TwoVersions(Relay):
    """Memory mid-upgrade behind one address: ListInteractions' first pages answered by
    one version, the pages after them (with a page_token) by the other. The older version
    is the real memory sent the request without oldest_first and after_interaction_id
    (fields it does not know, so ignores): it checks a page token as an older replica
    does, and refuses (INVALID_ARGUMENT, INVALID_PAGE_TOKEN) a newer one's token for a
    list read oldest first or after a position, and a newer one refuses its token for
    such a list."""

    def __init__(self, older_serves_first_pages: bool) -> None:
        super().__init__()
        self.older_serves_first_pages = older_serves_first_pages

    def request(self, method: str, request: bytes) -> bytes:
        if method != _LIST:
            return request
        asked = mem_pb.ListInteractionsRequest.FromString(request)
        if (not asked.page_token) != self.older_serves_first_pages:
            return request
        asked.ClearField("oldest_first")
        asked.ClearField("after_interaction_id")
        return asked.SerializeToString()


@pytest.mark.parametrize("older_serves_first_pages", [False, True], ids=["new-old", "old-new"])
async def test_a_fold_across_two_memory_versions_reads_as_before_quietly(
    stack_factory: StackFactory, caplog: pytest.LogCaptureFixture, older_serves_first_pages: bool
) -> None:
    """A rolling upgrade of memory: a fold's page token from a replica of one version
    reaches one of the other, which refuses it (INVALID_ARGUMENT naming page_token). The
    fold reads again as before the fields (newest first from the newest turn, tokens both
    versions take) and folds the oldest pending turns: counted in
    gensearch_gateway_summary_read_fallbacks_total{reason="page_token_refused"}, one INFO
    line, no WARNING, not ``failed``. Before, the fold failed (a WARNING, counted
    ``failed``) and every turn's fold failed the same way until the upgrade ended. Turns of
    30 KB and 64 KiB pages: two turns a page, so every read takes more than one."""
    caplog.set_level(logging.INFO, "gensearch.gateway.summary")
    stack = await _stack(stack_factory, memory={"max_page_bytes": 64 * 1024})
    cid = await _conversation(stack)
    ids = []
    for n in range(10):
        made = await stack.memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=cid, input=f"q{n} " + "x " * 15_000, response="answer"
            ),
            metadata=ALICE,
        )
        ids.append(made.interaction.interaction_id)
    failed, refused = _folds("failed"), _read_fallbacks("page_token_refused")
    mixed = _TwoVersions(older_serves_first_pages)
    mixed.target = f"127.0.0.1:{stack.servers['memory'].port}"
    async with serving(mixed) as address:
        for through in (3, 7):
            await _fold_directly(
                stack, cid, 2, queued=True, summary_max_read_turns=4, memory_addr=address
            )
            summary = (await _get(stack, cid)).summary
            assert summary.through_interaction_id == ids[through]
            assert set(_labels(summary.text)) == set(range(through + 1))
    assert _folds("failed") == failed
    # new-old: both folds' oldest-first reads went on at an older replica; old-new: the
    # second fold's read after the summary's end went on at a newer one (the first fold's
    # had no summary yet: a plain listing, and the older replica's oldest-first answer
    # said newest first, read as from an older memory).
    assert _read_fallbacks("page_token_refused") - refused == (1 if older_serves_first_pages else 2)
    lines = [r for r in caplog.records if r.name == "gensearch.gateway.summary"]
    assert not [r for r in lines if r.exc_info or r.levelno >= logging.WARNING], lines
    assert any(getattr(r, "reason", "") == "INVALID_PAGE_TOKEN" for r in lines), lines
