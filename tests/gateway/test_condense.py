"""Condensing a follow-up: each check on the model's rewrite, the deterministic fallback,
the method reported (unary and streamed), and the small-model prompt."""

from __future__ import annotations

from typing import Any

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format

from services.gateway import condense
from services.gateway.condense import (
    Method,
    Rejection,
    check_rewrite,
    content_words,
    fallback_query,
)
from services.gateway.conversation import REWRITE_SYSTEM_PROMPT, Turn
from tests.gateway.conftest import ALICE, Stack, StackFactory, create_books, fake_provider
from tests.support.fake_openai import Behaviour, FakeOpenAI

FIRST_ANSWER = (
    "Dune is a 1965 novel set on the desert planet Arrakis, where the spice melange is "
    "mined and great sandworms roam the dunes [1]."
)
TURNS = [Turn("Tell me about the desert planet book", FIRST_ANSWER)]


# -- the rules, one by one ------------------------------------------------------------------


def test_a_good_rewrite_passes() -> None:
    assert check_rewrite("When was Dune written", "When was it written?", TURNS) is None


@pytest.mark.parametrize(
    ("rewrite", "rejection"),
    [
        ("", Rejection.EMPTY),
        ('"" ...', Rejection.EMPTY),
        # 4 + 7 words: at most 2 * 11 + 8 = 30 words.
        ("Dune " + "spice melange sandworm " * 11, Rejection.TOO_LONG),
        (FIRST_ANSWER, Rejection.COPIES_ANSWER),
        # Near-copy: the answer's first half; 13 distinct words, all from the answer.
        ("Dune is a 1965 novel set on the desert planet Arrakis where spice is", None),
        ("recipes for banana bread", Rejection.NO_SHARED_WORDS),
    ],
)
def test_each_rule(rewrite: str, rejection: Rejection | None) -> None:
    expected = rejection or Rejection.COPIES_ANSWER
    assert check_rewrite(rewrite, "When was it written?", TURNS) is expected


def test_copy_rules_leave_short_queries_naming_the_answers_subject() -> None:
    # Every word of this rewrite is in the answer, but it is short: not a copy.
    assert check_rewrite("Dune desert planet spice", "When was it written?", TURNS) is None


def test_jaccard_near_copy_of_a_short_answer() -> None:
    turns = [Turn("Who wrote Dune?", "Frank Herbert wrote Dune.")]
    # {frank, herbert, wrote, dune} vs {frank, herbert, wrote, dune, in, 1965}: 4/6.
    assert check_rewrite("Frank Herbert wrote Dune in 1965", "Anything else?", turns) is (
        Rejection.COPIES_ANSWER
    )


# The probe's answer: a rewrite that copies its last sentence shares only 4 of its 7 words
# (under COPY_JACCARD) and has fewer than COPY_MIN_WORDS, so it used to be searched for.
SHORT_ANSWER = "Title: Dune\nbody: Spice.\n\nThe answer is Dune."


@pytest.mark.parametrize(
    "rewrite",
    [
        "The answer is Dune.",  # a sentence of the answer, as the probe found it accepted
        "the   ANSWER is dune",  # the same, whatever the case, spacing and punctuation
        "Title: Dune",  # a line
        "body spice",  # a line, two words
        "The answer is",  # part of a sentence, with its function words
        "answer is Dune",
    ],
)
def test_a_short_copy_of_a_line_or_sentence_is_answer_text(rewrite: str) -> None:
    turns = [Turn("Which book is about spice?", SHORT_ANSWER)]
    assert check_rewrite(rewrite, "Who wrote it?", turns) is Rejection.COPIES_ANSWER


@pytest.mark.parametrize(
    "rewrite",
    [
        "Who wrote Dune?",  # a genuine standalone question naming the answer's subject
        "Dune",  # the subject alone is part of a line, but a query, not a copy
        "Dune author",
        "Dune spice",  # words of two lines: no line or sentence
    ],
)
def test_a_short_query_about_the_answer_is_not_a_copy(rewrite: str) -> None:
    turns = [Turn("Which book is about spice?", SHORT_ANSWER)]
    assert check_rewrite(rewrite, "Who wrote it?", turns) is None


def test_copied_words_from_the_middle_of_a_long_sentence() -> None:
    # Most of a sentence with its function words is copied prose; a phrase of a longer
    # sentence, or its bare noun phrase, is what a good query repeats.
    turns = [Turn("Which book?", "It is set on the desert planet Arrakis.")]
    assert check_rewrite("set on the desert planet Arrakis", "Where is it set?", turns) is (
        Rejection.COPIES_ANSWER
    )
    assert check_rewrite("set on the desert planet Arrakis", "Where is it set?", TURNS) is None
    assert check_rewrite("desert planet Arrakis", "Where is it set?", TURNS) is None
    turns = [Turn("How do I open a file?", "You can close a file in Python with f.close().")]
    assert check_rewrite("close a file in Python", "And close it?", turns) is None
    # Markers are left out of the answer: "Frank Herbert" is that whole sentence.
    turns = [Turn("Who wrote Dune?", "It was written by Frank Herbert. Frank Herbert [2].")]
    assert check_rewrite("Frank Herbert", "What else?", turns) is Rejection.COPIES_ANSWER
    assert check_rewrite("written by Frank Herbert", "What else?", turns) is (
        Rejection.COPIES_ANSWER
    )
    assert check_rewrite("books by Frank Herbert", "What else?", turns) is None


def test_a_rewrite_with_a_citation_marker_is_answer_text() -> None:
    # Seen with the bundled model: the follow-up "And the sequel?" was "rewritten" as the
    # opening of its own earlier answer, "The answer to this question is: [1] …", with
    # another number. Too short for the copy rules, and it shared "answer" and "question"
    # with that answer, so it was searched for. A query never cites; only answers do.
    turns = [
        Turn(
            "Which book is set on a desert planet?",
            'The answer to this question is: [1]\n\nIn this book, "Dune" is set on a desert planet',
        )
    ]
    got = check_rewrite("The answer to this question is: [2]", "And the sequel?", turns)
    assert got is Rejection.COPIES_ANSWER
    assert check_rewrite("Dune sequel [1, 3]", "And the sequel?", turns) is (
        Rejection.COPIES_ANSWER
    )
    # Brackets that are not a marker are no reason.
    assert check_rewrite("Dune sequel [book]", "And the sequel?", turns) is None


def test_shared_words_may_come_from_the_history() -> None:
    # "sandworms" is only in the earlier answer.
    assert check_rewrite("sandworms", "And those creatures?", TURNS) is None


def test_fallback_joins_the_last_user_turns_key_terms() -> None:
    turns = [Turn("old question about emma", "..."), Turn("What does the assert statement do?", "")]
    assert (
        fallback_query("How can those checks be switched off?", turns)
        == "How can those checks be switched off? assert statement"
    )
    # Terms the question already has are not repeated; no history: the question.
    assert fallback_query("Is assert a statement?", turns) == "Is assert a statement?"
    assert fallback_query("Hello?", []) == "Hello?"


def test_decide_reports_method_raw_and_rejection() -> None:
    used = condense.decide('Query: "When was Dune written"', "When was it written?", TURNS)
    assert used == condense.Rewrite(
        "When was Dune written", Method.MODEL, 'Query: "When was Dune written"'
    )
    rejected = condense.decide(FIRST_ANSWER, "When was it written?", TURNS)
    assert rejected.method is Method.FALLBACK
    assert rejected.rejection is Rejection.COPIES_ANSWER
    assert rejected.raw == FIRST_ANSWER
    assert rejected.query == "When was it written? desert planet book"


def test_small_model_prompt_is_few_shot_with_a_short_answer() -> None:
    long_turns = [Turn("q0", "a0"), Turn("What is Dune?", "word " * 500)]
    prompt = condense.rewrite_prompt("local", "", long_turns, "When was it written?")
    assert prompt.max_tokens <= 32
    roles = [m.role for m in prompt.messages]
    user, assistant = gen_pb.ROLE_USER, gen_pb.ROLE_ASSISTANT
    assert roles[0] == gen_pb.ROLE_SYSTEM and roles[1:7] == [user, assistant] * 3
    # Only the last question and the follow-up: no answer to copy, no older turn.
    last = prompt.messages[-1].content
    assert last == "Previous question: What is Dune?\nFollow-up question: When was it written?"
    assert not any("word word" in m.content for m in prompt.messages)
    # Other providers get the general instruction and the whole transcript.
    general = condense.rewrite_prompt("openai", "gpt-4o", long_turns, "When was it written?")
    assert general.messages[0].content == REWRITE_SYSTEM_PROMPT and general.max_tokens == 64
    assert "q0" in general.messages[1].content
    # The bundled model's name anywhere: the small prompt.
    named = condense.rewrite_prompt("vllm", "HuggingFaceTB/SmolLM2-360M", long_turns, "q")
    assert named.messages[0].content == condense.SMALL_MODEL_SYSTEM_PROMPT


# -- through the gateway ----------------------------------------------------------------


def _is_rewrite(body: dict[str, Any]) -> bool:
    return body["messages"][0]["content"] in (
        REWRITE_SYSTEM_PROMPT,
        condense.SMALL_MODEL_SYSTEM_PROMPT,
    )


def replying(rewrite: str) -> Any:
    def reply(body: dict[str, Any]) -> str:
        if _is_rewrite(body):
            return rewrite
        if "desert" in body["messages"][-1]["content"].split("Question: ")[-1]:
            return FIRST_ANSWER
        return "It was written in 1965 [1]."

    return reply


async def _two_turns(stack: Stack, follow_up: str = "When was it written?") -> gw_pb.AskResponse:
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="Tell me about the desert planet book",
            new_conversation=True,
        ),
        metadata=ALICE,
    )
    assert first.rewrite_method == gw_pb.REWRITE_METHOD_UNCHANGED
    assert first.rewritten_query == ""
    return await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question=follow_up, conversation_id=first.conversation_id
        ),
        metadata=ALICE,
    )


@pytest.mark.parametrize(
    ("rewrite", "rejection"),
    [
        ("   ", gw_pb.REWRITE_REJECTION_EMPTY),
        ("Dune " + "spice melange sandworm " * 11, gw_pb.REWRITE_REJECTION_TOO_LONG),
        (FIRST_ANSWER, gw_pb.REWRITE_REJECTION_COPIES_ANSWER),
        ("recipes for banana bread", gw_pb.REWRITE_REJECTION_NO_SHARED_WORDS),
    ],
)
async def test_rejected_rewrite_falls_back(stack: Stack, rewrite: str, rejection: int) -> None:
    ids = await create_books(stack)
    stack.fake.reply = replying(rewrite)
    second = await _two_turns(stack)
    assert second.rewrite_method == gw_pb.REWRITE_METHOD_FALLBACK
    assert second.rewrite_rejection == rejection
    assert second.rewritten_query == "When was it written? desert planet book"
    stored = await stack.memory.GetInteraction(
        mem_pb.GetInteractionRequest(interaction_id=second.interaction_id), metadata=ALICE
    )
    info = json_format.MessageToDict(stored.interaction.additional_info)
    assert info["rewrite_method"] == "REWRITE_METHOD_FALLBACK"
    assert info["citation_coverage"] == second.citation_coverage
    # The fallback query found the first turn's topic (keyword search: "desert planet").
    assert second.hits[0].id == ids[0]


async def test_accepted_rewrite_is_used(stack: Stack) -> None:
    ids = await create_books(stack)
    stack.fake.reply = replying("Query: Neuromancer hacker written")
    second = await _two_turns(stack)
    assert second.rewrite_method == gw_pb.REWRITE_METHOD_MODEL
    assert second.rewrite_rejection == gw_pb.REWRITE_REJECTION_UNSPECIFIED
    assert second.rewritten_query == "Neuromancer hacker written"
    assert second.hits[0].id == ids[1]


async def test_failed_rewrite_call_falls_back(stack: Stack) -> None:
    ids = await create_books(stack)
    stack.fake.reply = replying("unused")
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="Tell me about the desert planet book",
            new_conversation=True,
        ),
        metadata=ALICE,
    )
    stack.fake.enqueue(Behaviour.error(400))  # the rewrite call; the answer is fine
    second = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="When was it written?",
            conversation_id=first.conversation_id,
        ),
        metadata=ALICE,
    )
    assert second.rewrite_method == gw_pb.REWRITE_METHOD_FALLBACK
    assert second.rewrite_rejection == gw_pb.REWRITE_REJECTION_MODEL_FAILED
    assert second.rewritten_query == "When was it written? desert planet book"
    assert second.hits[0].id == ids[0]
    assert second.answer == "It was written in 1965 [1]."


async def test_rewrite_off_is_unchanged(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.reply = replying("never asked")
    first = await _two_turns(stack)
    third = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="And the spice?",
            conversation_id=first.conversation_id,
            rewrite_query=False,
        ),
        metadata=ALICE,
    )
    assert third.rewrite_method == gw_pb.REWRITE_METHOD_UNCHANGED
    assert third.rewritten_query == ""


async def test_stream_reports_the_method_in_the_context_event(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.reply = replying(FIRST_ANSWER)
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books",
            llm_question="Tell me about the desert planet book",
            new_conversation=True,
        ),
        metadata=ALICE,
    )
    events = [
        e
        async for e in stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(
                collection="Books",
                llm_question="When was it written?",
                conversation_id=first.conversation_id,
            ),
            metadata=ALICE,
        )
    ]
    context = events[0].context
    assert context.rewrite_method == gw_pb.REWRITE_METHOD_FALLBACK
    assert context.rewrite_rejection == gw_pb.REWRITE_REJECTION_COPIES_ANSWER
    assert context.rewritten_query == "When was it written? desert planet book"
    final = events[-1].answer
    assert (final.rewrite_method, final.rewrite_rejection, final.rewritten_query) == (
        context.rewrite_method,
        context.rewrite_rejection,
        context.rewritten_query,
    )


async def test_local_provider_gets_the_small_model_prompt(
    stack_factory: StackFactory, fake: FakeOpenAI
) -> None:
    stack = await stack_factory(provider=fake_provider(fake, name="local"))
    await create_books(
        stack, generative=ret_pb.GenerativeConfig(provider="local", model="fake-model")
    )
    stack.fake.reply = replying("Dune written year")
    second = await _two_turns(stack)
    assert second.rewrite_method == gw_pb.REWRITE_METHOD_MODEL
    rewrite_calls = [r.json for r in stack.fake.chat_requests if _is_rewrite(r.json)]
    assert len(rewrite_calls) == 1
    sent = rewrite_calls[0]
    assert sent["messages"][0]["content"] == condense.SMALL_MODEL_SYSTEM_PROMPT
    assert sent["max_tokens"] == 24 and sent["temperature"] == 0.0
    assert sent["messages"][-1]["content"].endswith("Follow-up question: When was it written?")


def test_words_match_whatever_their_unicode_form() -> None:
    # A question typed with decomposed accents (macOS) or full-width letters shares its
    # words with a rewrite the model wrote in NFC.
    turns = [Turn("Où est le cafe\u0301 de Zu\u0308rich?", "Près du lac.")]
    assert check_rewrite("café Zürich", "\uff43\uff41\uff46\u00e9 ouvert?", turns) is None
    assert check_rewrite("café Zürich", "Et le mardi?", turns) is None
    assert content_words("Zu\u0308rich \ufb01lm") == content_words("Zürich film")
